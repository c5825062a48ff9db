"""The Train page's panels."""
