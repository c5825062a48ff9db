"""The Predict page's panels."""
