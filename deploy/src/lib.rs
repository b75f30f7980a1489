//! Deployment rendering for cinfer.
//!
//! Will hold: renderers for Azure Container Instances (ARM template) and Kubernetes confidential pods, the policy
//! digest (hostdata) computation that feeds the key-release and client policies, and the local stack runner.
