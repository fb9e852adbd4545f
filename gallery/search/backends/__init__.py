"""One module per search backend; `gallery.search.index.space_index` picks by setting."""
