"""The Data page's panels."""
