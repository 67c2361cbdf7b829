"""Local stand-in for DashScope and EventBridge."""
