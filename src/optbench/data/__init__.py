"""The data layer: datasets put on disk and checked (prepare, offline), and read into
memory as tensors (in_memory). It imports only config, errors and files."""
