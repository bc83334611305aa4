"""fedstream package."""
