"""The Run page's panels."""
