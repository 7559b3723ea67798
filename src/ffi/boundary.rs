//! Panic boundaries and pointer checks for the exported functions.
//!
//! Every `extern "C"` function runs its body inside [`ffi_boundary!`], so a
//! bug in Rust becomes `MP_ERR_PANIC` (and a log line) instead of unwinding
//! into Apache. Pointers from C are turned into references with
//! [`ref_from_ptr!`], which returns `MP_ERR_NULL_ARG` on NULL.

use super::mp_str;

/// Runs a body that returns `mp_status`, turning a panic into `MP_ERR_PANIC`.
macro_rules! ffi_boundary {
    ($body:block) => {{
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(
            || -> $crate::ffi::mp_status { $body },
        )) {
            Ok(status) => status,
            Err(payload) => {
                $crate::ffi::boundary::log_panic(payload);
                $crate::ffi::mp_status::MP_ERR_PANIC
            }
        }
    }};
}

/// Turns a possibly-NULL pointer into a shared reference, or returns
/// `MP_ERR_NULL_ARG` from the enclosing function.
macro_rules! ref_from_ptr {
    ($ptr:expr) => {{
        let ptr = $ptr;
        if ptr.is_null() {
            return $crate::ffi::mp_status::MP_ERR_NULL_ARG;
        }
        // SAFETY: the pointer is non-NULL, and the exported function's
        // contract (ffi/passenger_ffi.h) says it points to a valid, live
        // object for the duration of the call.
        unsafe { &*ptr }
    }};
}

/// Logs a caught panic's message.
pub fn log_panic(payload: Box<dyn std::any::Any + Send>) {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    log::error!(target: "MP0900", "internal error (a bug): {message}");
}

impl mp_str {
    /// The bytes of a borrowed C string slice.
    ///
    /// # Safety
    /// `ptr` is NULL with `len` 0, or points to `len` readable bytes that
    /// stay valid and unchanged for `'a`.
    pub unsafe fn as_bytes<'a>(&self) -> &'a [u8] {
        if self.ptr.is_null() || self.len == 0 {
            &[]
        } else {
            // SAFETY: non-NULL and `len` readable bytes, per this function's contract.
            unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
        }
    }

    /// A `mp_str` borrowing `bytes`; valid while `bytes` is.
    pub fn borrow(bytes: &[u8]) -> mp_str {
        mp_str {
            ptr: bytes.as_ptr().cast(),
            len: bytes.len(),
        }
    }
}

/// Writes `message` NUL-terminated into a caller buffer of `len` bytes,
/// truncating if needed. A NULL buffer or zero length writes nothing.
///
/// # Safety
/// `buf` is NULL or points to `len` writable bytes.
pub unsafe fn write_message(buf: *mut std::os::raw::c_char, len: usize, message: &str) {
    if buf.is_null() || len == 0 {
        return;
    }
    let n = message.len().min(len - 1);
    // SAFETY: `buf` has `len` writable bytes and we write n + 1 <= len of them.
    unsafe {
        std::ptr::copy_nonoverlapping(message.as_ptr(), buf.cast::<u8>(), n);
        *buf.add(n) = 0;
    }
}
