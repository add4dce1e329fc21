"""One module per command; each only wires config -> library calls -> report."""
