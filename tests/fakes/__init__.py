"""Fakes of outside services for tests and demos (not part of the product)."""
