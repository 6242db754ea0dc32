"""Built-in campaign specs (YAML package data) and the campaign spec schema."""
