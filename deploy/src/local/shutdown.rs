//! Cooperative shutdown: a [`Cancel`] flag that SIGINT/SIGTERM set ([`Cancel::on_signals`]), checked by every
//! wait of the pipeline, so Ctrl-C during a long start (Triton loading a large model) stops as cleanly as
//! Ctrl-C while serving.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::error::{LocalError, Result};

/// A shared "stop now" flag.
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A flag that is not set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the flag.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether the flag is set.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// A flag set by the first SIGINT or SIGTERM this process receives. The handlers live on a small thread
    /// with its own single-threaded runtime; from then on these signals no longer kill the process, so the
    /// caller must poll the flag and shut down.
    pub fn on_signals() -> Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let cancel = Self::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(LocalError::io("creating the signal runtime"))?;
        // Register on this thread so that the handlers are in place when this returns.
        let (mut int, mut term) = rt
            .block_on(async {
                Ok::<_, std::io::Error>((signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?))
            })
            .map_err(LocalError::io("installing the SIGINT/SIGTERM handlers"))?;
        let flag = cancel.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                rt.block_on(async {
                    tokio::select! {
                        _ = int.recv() => tracing::info!("SIGINT: stopping"),
                        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
                    }
                });
                flag.cancel();
            })
            .map_err(LocalError::io("starting the signal thread"))?;
        Ok(cancel)
    }
}
