"""Drop-ins for other libraries' training loops (each imports its library on first use)."""
