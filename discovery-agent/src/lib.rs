//! The edgewasm discovery agent: finds devices on its node and publishes them as Device resources
