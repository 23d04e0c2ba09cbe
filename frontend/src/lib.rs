//! # imgb-frontend
//!
//! Turns a Dockerfile into a typed, validated build description:
//!
//! 1. [`parser`]: text → AST (directives, continuations, heredocs, JSON vs shell form, flags).
//! 2. [`instructions`]: AST → typed instructions with validated flags.
//! 3. [`shell`]: word expansion exactly as BuildKit's shell lexer does it.
//! 4. [`ignore`]: `.dockerignore` matching with moby's pattern semantics.
//!
//! Invariants: no I/O beyond reading the files it is handed; bad input never panics and always
//! becomes a [`Diagnostic`] that names the line.

pub mod diagnostic;
pub mod dispatch;
pub mod history;
pub mod image;
pub mod instructions;
pub mod lint;
pub mod lower;
pub mod parser;
pub mod plan;
pub mod platform;
pub mod shell;
mod suggest;

pub use diagnostic::{Diagnostic, Position, Severity, Span};
/// `.dockerignore` matching lives in the builder, which applies it to contexts and `--exclude`.
pub use imgb_builder::ignore;
