"""The bundled demo: an order-desk agent on generated orders, killed and resumed."""
