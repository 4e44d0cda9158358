"""The relational database: the declarative base and the engine."""
