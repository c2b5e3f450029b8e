"""Pure, deterministic rules and types shared by workflows, activities and the API.

Nothing here does I/O except `process.load_catalog`, which reads the bank's process
files once at start; workflows receive the validated process in their input.
"""
