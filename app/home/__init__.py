"""The Home page's panels."""
