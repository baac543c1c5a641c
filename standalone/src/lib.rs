//! Standalone mode: discovery, placement and the runtime on one machine without Kubernetes
