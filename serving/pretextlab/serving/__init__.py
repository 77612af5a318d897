"""Ray Serve embedding endpoints for registered encoders (built in the serving issue)."""
