//! Every function the shim calls, in the order of Apache's phases.
//!
//! Each is thin: check pointers, copy the C structs into owned or borrowed
//! Rust values, call safe code in [`crate::module`], and map the result to
//! an `mp_status`. The ownership and threading rules of each function are
//! written in `ffi/passenger_ffi.h`.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::raw::c_char;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::boundary::write_message;
use super::{
    MP_TUNNEL_AGAIN, mp_log_fn, mp_match, mp_pair, mp_request, mp_request_io, mp_startup_info,
    mp_status, mp_str,
};
use super::{mp_dir_config, mp_server_config};
use crate::config::DirConfig;
use crate::module::handler::{self, Outcome, RequestIo};
use crate::module::lifecycle::{self, StartupInfo};
use crate::module::matcher::{self, Match, MatchInput};
use crate::module::request::{self, RequestInfo};

/// What `mp_match` points to: the decision and the location's config.
pub struct MatchHandle {
    matched: Match,
    dir: DirConfig,
}

/// Installs the Apache log sink. See `ffi/passenger_ffi.h`.
#[unsafe(no_mangle)]
pub extern "C" fn mp_log_init(sink: mp_log_fn, max_level: i32) -> mp_status {
    ffi_boundary!({
        let Some(sink) = sink else {
            return mp_status::MP_ERR_NULL_ARG;
        };
        let filter = match max_level {
            ..=3 => log::LevelFilter::Error,
            4 => log::LevelFilter::Warn,
            5 => log::LevelFilter::Info,
            6 => log::LevelFilter::Debug,
            _ => log::LevelFilter::Trace,
        };
        crate::log::init_apache(
            Box::new(move |level, text: &str| {
                // SAFETY: the shim's sink copies the borrowed text before returning.
                unsafe { sink(level, text.as_ptr().cast(), text.len()) }
            }),
            filter,
        );
        mp_status::MP_OK
    })
}

/// Finds or starts the agent and configures it. See `ffi/passenger_ffi.h`.
///
/// # Safety
/// `config` and `info` point to valid structs whose strings live for the
/// call; `agent_pid` is writable; `errbuf` is NULL or has `errlen` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mp_agent_ensure(
    config: *const mp_server_config,
    info: *const mp_startup_info,
    agent_pid: *mut i32,
    errbuf: *mut c_char,
    errlen: usize,
) -> mp_status {
    ffi_boundary!({
        let config = ref_from_ptr!(config);
        let info = ref_from_ptr!(info);
        if agent_pid.is_null() {
            return mp_status::MP_ERR_NULL_ARG;
        }
        let fail = |status: mp_status, message: &str| {
            // SAFETY: errbuf is NULL or has errlen writable bytes (contract).
            unsafe { write_message(errbuf, errlen, message) };
            status
        };
        // SAFETY: the config's strings are valid for the call (contract).
        let config = match unsafe { super::config::server_config_from_ffi(config) } {
            Ok(config) => config,
            Err(e) => return fail(mp_status::MP_ERR_INVALID, &e.to_string()),
        };
        if let Err(e) = config.check() {
            return fail(mp_status::MP_ERR_INVALID, &e.to_string());
        }
        // SAFETY: the info's strings are valid for the call (contract).
        let info = unsafe { startup_info(info) };
        crate::module::set_server_software(&info.server_software);
        crate::module::set_stat_throttle(config.stat_throttle_rate);
        match lifecycle::ensure_agent(&config, &info) {
            Ok(pid) => {
                // SAFETY: checked non-NULL above; the caller owns the int.
                unsafe { *agent_pid = pid as i32 };
                mp_status::MP_OK
            }
            Err(e) => fail(mp_status::MP_ERR_AGENT, &e),
        }
    })
}

/// Copies the startup info.
///
/// # Safety
/// Every `mp_str` in `info` is valid for the call.
unsafe fn startup_info(info: &mp_startup_info) -> StartupInfo {
    // SAFETY: per this function's contract.
    let bytes = |s: &mp_str| unsafe { s.as_bytes() }.to_vec();
    StartupInfo {
        server_root: bytes(&info.server_root),
        config_file: bytes(&info.config_file),
        module_path: PathBuf::from(std::ffi::OsStr::from_bytes(&bytes(&info.module_path))),
        server_software: String::from_utf8_lossy(&bytes(&info.server_software)).into_owned(),
        apache_pid: info.apache_pid,
        apache_uid: info.apache_uid,
        apache_gid: info.apache_gid,
        generation: info.generation,
    }
}

/// Decides whether a request belongs to an app. See `ffi/passenger_ffi.h`.
///
/// # Safety
/// `dir` and `req` are valid for the call; `out` and `http_status` are writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mp_match_request(
    dir: *const mp_dir_config,
    req: *const mp_request,
    out: *mut *mut mp_match,
    http_status: *mut u32,
) -> mp_status {
    ffi_boundary!({
        let dir = ref_from_ptr!(dir);
        let req = ref_from_ptr!(req);
        if out.is_null() || http_status.is_null() {
            return mp_status::MP_ERR_NULL_ARG;
        }
        // SAFETY: dir's strings are valid for the call (contract).
        let dir = match unsafe { super::config::dir_config_from_ffi(dir) } {
            Ok(dir) => dir,
            Err(e) => {
                log::error!(target: "MP0101", "{e}");
                // SAFETY: checked non-NULL above.
                unsafe { *http_status = 500 };
                return mp_status::MP_ERR_INVALID;
            }
        };
        // SAFETY: req's strings are valid for the call (contract).
        let input = unsafe {
            MatchInput {
                uri: req.uri.as_bytes(),
                filename: req.filename.as_bytes(),
                document_root: req.document_root.as_bytes(),
            }
        };
        match matcher::match_request(&dir, &input) {
            Ok(Some(matched)) => {
                let handle = Box::new(MatchHandle { matched, dir });
                // SAFETY: checked non-NULL; the shim frees it with mp_match_free.
                unsafe { *out = Box::into_raw(handle).cast::<mp_match>() };
                mp_status::MP_OK
            }
            Ok(None) => mp_status::MP_DECLINED,
            Err(e) => {
                log::error!(target: "MP0102", "{}", e.0);
                // SAFETY: checked non-NULL above.
                unsafe { *http_status = 500 };
                mp_status::MP_ERR_INVALID
            }
        }
    })
}

/// Frees a handle from `mp_match_request`; NULL is ignored.
///
/// # Safety
/// `m` is NULL or a handle from `mp_match_request` not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mp_match_free(m: *mut mp_match) {
    if !m.is_null() {
        // SAFETY: created by Box::into_raw in mp_match_request, freed once.
        drop(unsafe { Box::from_raw(m.cast::<MatchHandle>()) });
    }
}

/// Serves a matched request. See `ffi/passenger_ffi.h`.
///
/// # Safety
/// `m` is a live handle; `req` and `io` are valid for the call and `io`'s
/// callbacks may be called on this thread until it returns.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mp_handle_request(
    m: *const mp_match,
    req: *const mp_request,
    io: *const mp_request_io,
    http_status: *mut u32,
) -> mp_status {
    ffi_boundary!({
        let handle = ref_from_ptr!(m.cast::<MatchHandle>());
        let req = ref_from_ptr!(req);
        let io = ref_from_ptr!(io);
        if http_status.is_null() {
            return mp_status::MP_ERR_NULL_ARG;
        }
        // SAFETY: req's strings and arrays are valid for the call (contract).
        let info = unsafe { request_info(req) };
        let head = request::build_request(
            &handle.dir,
            &handle.matched,
            &info,
            &crate::module::server_software(),
        );
        let mut bridge = Bridge { io };
        let (status, code) = match handler::handle(
            head,
            info.has_body,
            info.content_length,
            handle.dir.error_override(),
            &mut bridge,
        ) {
            Outcome::Done => (mp_status::MP_OK, 200),
            Outcome::Failed(code) => (mp_status::MP_ERR_AGENT, u32::from(code)),
            Outcome::Aborted => (mp_status::MP_ERR_CLIENT_GONE, 0),
        };
        // SAFETY: checked non-NULL above.
        unsafe { *http_status = code };
        status
    })
}

/// Borrows a `mp_request` as a [`RequestInfo`].
///
/// # Safety
/// Every pointer in `req` is valid for `'a`.
unsafe fn request_info<'a>(req: &'a mp_request) -> RequestInfo<'a> {
    // SAFETY: per this function's contract.
    let pairs = |ptr: *const mp_pair, len: usize| -> Vec<(&'a [u8], &'a [u8])> {
        if ptr.is_null() || len == 0 {
            return Vec::new();
        }
        // SAFETY: `ptr` points to `len` pairs valid for 'a.
        let slice = unsafe { std::slice::from_raw_parts(ptr, len) };
        // SAFETY: each pair's strings are valid for 'a.
        slice
            .iter()
            .map(|p| unsafe { (p.name.as_bytes(), p.value.as_bytes()) })
            .collect()
    };
    // SAFETY: per this function's contract.
    unsafe {
        RequestInfo {
            method: req.method.as_bytes(),
            uri: req.uri.as_bytes(),
            unparsed_uri: req.unparsed_uri.as_bytes(),
            args: req.args.as_bytes(),
            protocol: req.protocol.as_bytes(),
            filename: req.filename.as_bytes(),
            document_root: req.document_root.as_bytes(),
            server_name: req.server_name.as_bytes(),
            server_port: req.server_port,
            client_ip: req.client_ip.as_bytes(),
            client_port: req.client_port,
            local_ip: req.local_ip.as_bytes(),
            remote_user: req.remote_user.as_bytes(),
            auth_type: req.auth_type.as_bytes(),
            is_https: req.is_https != 0,
            content_length: u64::try_from(req.content_length).ok(),
            has_body: req.has_body != 0,
            headers: pairs(req.headers, req.headers_len),
            env: pairs(req.env, req.env_len),
        }
    }
}

/// tunnel_write's and tunnel_flush's answer: bytes pending, or the client gone.
fn pending_or_gone(rc: i32) -> io::Result<bool> {
    match rc {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(io::Error::from(io::ErrorKind::BrokenPipe)),
    }
}

/// `headers` as the shim's pairs, borrowing the bytes.
fn borrow_pairs(headers: &[(&[u8], &[u8])]) -> Vec<mp_pair> {
    headers
        .iter()
        .map(|(n, v)| mp_pair {
            name: mp_str::borrow(n),
            value: mp_str::borrow(v),
        })
        .collect()
}

/// [`RequestIo`] over the shim's callback table.
struct Bridge<'a> {
    io: &'a mp_request_io,
}

impl RequestIo for Bridge<'_> {
    fn read_body(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(read) = self.io.read_body else {
            return Ok(0);
        };
        // SAFETY: the callback reads at most buf.len() bytes into buf; ctx is
        // the shim's, valid during mp_handle_request.
        let n = unsafe { read(self.io.ctx, buf.as_mut_ptr(), buf.len()) };
        usize::try_from(n)
            .map_err(|_| io::Error::other("the client's request body could not be read"))
    }

    fn send_head(
        &mut self,
        status: u16,
        reason: &[u8],
        headers: &[(&[u8], &[u8])],
    ) -> io::Result<()> {
        let Some(send) = self.io.send_head else {
            return Err(io::Error::other("no send_head"));
        };
        let pairs = borrow_pairs(headers);
        // SAFETY: the pairs borrow `headers`, alive for the call; the shim copies them.
        let rc = unsafe {
            send(
                self.io.ctx,
                u32::from(status),
                mp_str::borrow(reason),
                pairs.as_ptr(),
                pairs.len(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::other("the response head was refused"))
        }
    }

    fn client_gone(&mut self) -> bool {
        let Some(gone) = self.io.client_gone else {
            return false;
        };
        // SAFETY: the callback only polls the client socket; ctx is the
        // shim's, valid during mp_handle_request.
        unsafe { gone(self.io.ctx) != 0 }
    }

    fn open_tunnel(
        &mut self,
        status: u16,
        reason: &[u8],
        headers: &[(&[u8], &[u8])],
    ) -> io::Result<OwnedFd> {
        let Some(open) = self.io.tunnel_open else {
            return Err(io::Error::other("no tunnel_open"));
        };
        let pairs = borrow_pairs(headers);
        // SAFETY: the pairs borrow `headers`, alive for the call; the shim
        // copies them before it returns.
        let fd = unsafe {
            open(
                self.io.ctx,
                u32::from(status),
                mp_str::borrow(reason),
                pairs.as_ptr(),
                pairs.len(),
            )
        };
        if fd < 0 {
            return Err(io::Error::other(
                "the connection could not switch protocols",
            ));
        }
        // SAFETY: the shim returned the client socket, open until the
        // request ends; the duplicate made here is ours to close.
        unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()
    }

    fn tunnel_read(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let Some(read) = self.io.tunnel_read else {
            return Err(io::Error::other("no tunnel_read"));
        };
        // SAFETY: the callback reads at most buf.len() bytes into buf; ctx is
        // the shim's, valid during mp_handle_request.
        let n = unsafe { read(self.io.ctx, buf.as_mut_ptr(), buf.len()) };
        match n {
            n if n == i64::from(MP_TUNNEL_AGAIN) => Ok(None),
            n => usize::try_from(n)
                .map(Some)
                .map_err(|_| io::Error::from(io::ErrorKind::ConnectionReset)),
        }
    }

    fn tunnel_write(&mut self, data: &[u8]) -> io::Result<bool> {
        let Some(write) = self.io.tunnel_write else {
            return Err(io::Error::other("no tunnel_write"));
        };
        // SAFETY: data is valid for the call; the shim copies what it keeps.
        pending_or_gone(unsafe { write(self.io.ctx, data.as_ptr(), data.len()) })
    }

    fn tunnel_flush(&mut self) -> io::Result<bool> {
        let Some(flush) = self.io.tunnel_flush else {
            return Err(io::Error::other("no tunnel_flush"));
        };
        // SAFETY: ctx is the shim's, valid during mp_handle_request.
        pending_or_gone(unsafe { flush(self.io.ctx) })
    }

    fn tunnel_closed(&mut self) -> bool {
        let Some(closed) = self.io.tunnel_closed else {
            return false;
        };
        // SAFETY: the callback only looks at the connection; ctx is the
        // shim's, valid during mp_handle_request.
        unsafe { closed(self.io.ctx) != 0 }
    }

    fn write_body(&mut self, data: &[u8], flush: bool) -> io::Result<()> {
        let Some(write) = self.io.write_body else {
            return Err(io::Error::other("no write_body"));
        };
        // SAFETY: data is valid for the call; the shim copies or passes it on before returning.
        let rc = unsafe { write(self.io.ctx, data.as_ptr(), data.len(), i32::from(flush)) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
    }
}
