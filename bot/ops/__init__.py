"""Operations: the health and metrics endpoint, logging set-up, request ids."""
