//! The edgewasm operator: reconciles WasmWorkloads against Devices into pinned Pods
