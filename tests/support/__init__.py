"""Test helpers that stand in for outside parties (EventBridge's signer and certificate host)."""
