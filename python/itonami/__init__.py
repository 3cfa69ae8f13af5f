"""itonami: a durable, event-sourced workflow engine with a Rust core."""
