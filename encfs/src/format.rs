//! The cinfer image format v1 (normative spec: `docs/FORMAT.md`).
