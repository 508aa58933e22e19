//! The library's errors, by kind, so that a program can tell a model it cannot read from a
//! model too large for the adapter, a bad setting, or a lost device.
//!
//! Inside, Keel passes `anyhow` errors; the few places that know a kind raise a [`Error`]
//! through them (`anyhow::Error::from`), so its text reaches the command line unchanged, and
//! the crate root's functions recover the kind ([`Error::from`]).

use std::fmt;

/// What went wrong, by kind. Every variant's text is one line naming the file, tensor or field.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A model's files could not be read or are malformed.
    Load(String),
    /// Something Keel does not implement (an architecture, a tensor type, a format).
    Unsupported(String),
    /// A tensor needs more bytes in one binding than the adapter allows.
    DoesNotFit {
        /// The tensor.
        what: String,
        /// Its shape.
        shape: Vec<usize>,
        /// Bytes it needs in one binding.
        bytes: u64,
        /// The adapter's `max_storage_buffer_binding_size`.
        limit: u64,
        /// How many rows of it would fit.
        rows_that_fit: u64,
    },
    /// A prompt and its new tokens exceed the model's context.
    ContextExceeded {
        /// Prompt tokens.
        prompt: usize,
        /// New tokens asked for.
        max_tokens: usize,
        /// The model's context length.
        context: usize,
    },
    /// A setting out of its range, by its field's name (`temperature`, `top_p`, ...).
    InvalidArgument {
        /// The field.
        field: &'static str,
        /// What was expected and what was given, without the field's name.
        message: String,
    },
    /// The GPU device was lost or reported an error no one caught.
    DeviceLost(String),
    /// Anything else, with its whole context.
    Other(anyhow::Error),
}

/// Keel's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An invalid setting of `field`.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Error {
        Error::InvalidArgument { field, message: message.into() }
    }

    /// An error from work on `gpu`: the device's loss first, since it explains the rest.
    pub(crate) fn on_device(gpu: &crate::Gpu, e: anyhow::Error) -> Error {
        match gpu.check_lost() {
            Err(lost) => Error::DeviceLost(format!("{lost:#}")),
            Ok(()) => Error::from(e),
        }
    }

    /// The text with a field named as `name_of` names it (the command line passes its flags).
    pub fn render(&self, name_of: impl Fn(&str) -> String) -> String {
        match self {
            Error::InvalidArgument { field, message } => format!("{} {message}", name_of(field)),
            Error::ContextExceeded { prompt, max_tokens, context } => format!(
                "the prompt ({prompt} tokens) plus {} {max_tokens} exceeds the model's context of {context} tokens",
                name_of("max_tokens")
            ),
            Error::DoesNotFit { what, shape, bytes, limit, rows_that_fit } => format!(
                "tensor '{what}' of shape {shape:?} needs {bytes} bytes in one binding, over this adapter's max_storage_buffer_binding_size of {limit} bytes (at most {rows_that_fit} rows of it fit)"
            ),
            Error::Load(m) | Error::Unsupported(m) | Error::DeviceLost(m) => m.clone(),
            Error::Other(e) => format!("{e:#}"),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(str::to_string))
    }
}

impl std::error::Error for Error {}

impl From<anyhow::Error> for Error {
    /// The kind an inner function raised, wherever it sits in the context chain (the
    /// context's words are kept in front); else [`Error::Other`].
    fn from(e: anyhow::Error) -> Error {
        match e.downcast::<Error>() {
            Ok(kind) => kind,
            Err(e) => Error::Other(e),
        }
    }
}
