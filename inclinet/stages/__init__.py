"""The stages of the workflow, one module each."""
