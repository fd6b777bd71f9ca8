//! A ureq transport layer that wipes the HTTP client's own buffers: transit answers carry the
//! data key as base64 (`"plaintext": "..."`) and encrypt requests send it, so ureq's input and
//! output buffers hold it, and ureq frees them without wiping. This layer overwrites them
//! after every transmit (the request is out) and when the connection is dropped; the agent
//! keeps no idle connections (`Client::new`), so a connection, and with it the last answer,
//! is dropped as soon as its body is read.
//!
//! It sits on top of ureq's default chain, so for `https` it wraps the TLS transport, whose
//! buffers hold the decrypted plaintext; rustls's own record buffers are not reachable from
//! here (see the README threat model).
//!
//! `ureq::unversioned` may change in a minor ureq release: Cargo.lock pins the version, and
//! `tests/dek_memory.rs` fails if a change lets a copy through.

use std::fmt;

use ureq::unversioned::transport::{Buffers, ConnectionDetails, Connector, NextTimeout, Transport};
use zeroize::Zeroize;

/// Wraps what the previous connector produced in a [`Wiping`] transport.
#[derive(Debug)]
pub(crate) struct WipingConnector;

impl Connector<Box<dyn Transport>> for WipingConnector {
    type Out = Wiping;

    fn connect(
        &self,
        _details: &ConnectionDetails,
        chained: Option<Box<dyn Transport>>,
    ) -> Result<Option<Wiping>, ureq::Error> {
        Ok(chained.map(Wiping))
    }
}

/// A transport whose buffers are wiped once used.
pub(crate) struct Wiping(Box<dyn Transport>);

impl fmt::Debug for Wiping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Wiping(..)")
    }
}

/// Overwrite the output buffer and the input buffer's free space (the scratch space a
/// request body is staged in, and everything already consumed).
fn wipe_spent(b: &mut dyn Buffers) {
    b.output().zeroize();
    b.input_append_buf().zeroize();
}

impl Transport for Wiping {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.0.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        let r = self.0.transmit_output(amount, timeout);
        wipe_spent(self.0.buffers());
        r
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.0.await_input(timeout)
    }

    fn is_open(&mut self) -> bool {
        self.0.is_open()
    }

    fn is_tls(&self) -> bool {
        self.0.is_tls()
    }
}

impl Drop for Wiping {
    fn drop(&mut self) {
        let b = self.0.buffers();
        // Consume what is left so the free space is the whole buffer.
        let left = b.input().len();
        b.input_consume(left);
        wipe_spent(b);
    }
}
