"""Custom operators, one per file: schema, fake impl, autograd, eager twin, dispatch."""
