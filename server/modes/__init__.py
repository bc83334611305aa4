"""Round modes: synchronous rounds and buffered asynchronous rounds behind one interface the core calls."""
