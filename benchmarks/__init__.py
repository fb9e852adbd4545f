"""Dev/test tooling beside the product: evaluation harnesses and their commands
(evaluate, evaluate_copies, benchmark*, loadtest), the live test stack, attack generators.
Installed as a Django app by the settings outside production."""
