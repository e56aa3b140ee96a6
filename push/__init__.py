"""Push bridge: wakes offline devices through APNs and other providers."""
