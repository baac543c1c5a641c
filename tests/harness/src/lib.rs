//! End-to-end test harness: the real CRD apiserver, an in-repo server for the core kinds, a
//! path-routing proxy with fault injection in front of both, and a test kubelet over CRI.
