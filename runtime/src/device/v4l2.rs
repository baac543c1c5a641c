//! V4L2 video nodes: one still frame through the capture ioctls, with `read()` when the driver offers it
//! and otherwise a short memory-mapped stream (request buffers, queue, stream on, dequeue one, stream off).
//!
//! The ioctl structures are declared here with the kernel's layout (checked by size at compile time), which
//! is why this module may use `unsafe`: every unsafe block is one ioctl or mapping on a file descriptor
//! this module owns, with a buffer of the declared size.
#![allow(unsafe_code)]

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::camera::{Camera, CameraInfo, Frame, PixelFormat};
use super::{DeviceError, io_error, now_ns};

const CAP_VIDEO_CAPTURE: u32 = 0x0000_0001;
const CAP_READWRITE: u32 = 0x0100_0000;
const CAP_STREAMING: u32 = 0x0400_0000;
const CAP_DEVICE_CAPS: u32 = 0x8000_0000;
const BUF_TYPE_VIDEO_CAPTURE: u32 = 1;
const MEMORY_MMAP: u32 = 1;
/// Buffers requested for a still: the driver may need more than one to start streaming.
const BUFFERS: u32 = 2;
/// A frame must arrive within this time.
const FRAME_TIMEOUT: Duration = Duration::from_secs(5);

#[repr(C)]
#[derive(Default)]
struct Capability {
    driver: [u8; 16],
    card: [u8; 32],
    bus_info: [u8; 32],
    version: u32,
    capabilities: u32,
    device_caps: u32,
    reserved: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PixFormat {
    width: u32,
    height: u32,
    pixelformat: u32,
    field: u32,
    bytesperline: u32,
    sizeimage: u32,
    colorspace: u32,
    priv_: u32,
    flags: u32,
    ycbcr_enc: u32,
    quantization: u32,
    xfer_func: u32,
}

/// `struct v4l2_format`: the union is 200 bytes, pointer-aligned (it holds a `struct v4l2_window`).
#[repr(C)]
struct FormatIoctl {
    type_: u32,
    fmt: FormatData,
}

#[repr(C)]
struct FormatData {
    pix: PixFormat,
    rest: [u8; 152],
    _align: [libc::c_ulong; 0],
}

#[repr(C)]
#[derive(Default)]
struct RequestBuffers {
    count: u32,
    type_: u32,
    memory: u32,
    capabilities: u32,
    flags: u8,
    reserved: [u8; 3],
}

#[repr(C)]
struct Buffer {
    index: u32,
    type_: u32,
    bytesused: u32,
    flags: u32,
    field: u32,
    timestamp: libc::timeval,
    timecode: [u32; 4],
    sequence: u32,
    memory: u32,
    /// The union `m`; for MMAP buffers its first 32 bits are the offset to map.
    m: libc::c_ulong,
    length: u32,
    reserved2: u32,
    request_fd: i32,
}

#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(size_of::<Capability>() == 104);
    assert!(size_of::<FormatIoctl>() == 208);
    assert!(size_of::<RequestBuffers>() == 20);
    assert!(size_of::<Buffer>() == 88);
};

impl Buffer {
    fn new(index: u32) -> Self {
        Self {
            index,
            type_: BUF_TYPE_VIDEO_CAPTURE,
            bytesused: 0,
            flags: 0,
            field: 0,
            timestamp: libc::timeval {
                tv_sec: 0,
                tv_usec: 0,
            },
            timecode: [0; 4],
            sequence: 0,
            memory: MEMORY_MMAP,
            m: 0,
            length: 0,
            reserved2: 0,
            request_fd: 0,
        }
    }

    fn offset(&self) -> i64 {
        // Little- and big-endian alike: the kernel writes `m.offset` (a u32) at the union's start.
        let bytes = self.m.to_ne_bytes();
        i64::from(u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }
}

nix::ioctl_read!(vidioc_querycap, b'V', 0, Capability);
nix::ioctl_readwrite!(vidioc_g_fmt, b'V', 4, FormatIoctl);
nix::ioctl_readwrite!(vidioc_reqbufs, b'V', 8, RequestBuffers);
nix::ioctl_readwrite!(vidioc_querybuf, b'V', 9, Buffer);
nix::ioctl_readwrite!(vidioc_qbuf, b'V', 15, Buffer);
nix::ioctl_readwrite!(vidioc_dqbuf, b'V', 17, Buffer);
nix::ioctl_write_ptr!(vidioc_streamon, b'V', 18, libc::c_int);
nix::ioctl_write_ptr!(vidioc_streamoff, b'V', 19, libc::c_int);

fn fourcc(v: u32) -> String {
    v.to_le_bytes()
        .iter()
        .map(|b| char::from(*b))
        .collect::<String>()
        .trim_end()
        .to_string()
}

fn format_of(pixelformat: u32) -> PixelFormat {
    match fourcc(pixelformat).as_str() {
        "MJPG" => PixelFormat::Mjpeg,
        "JPEG" => PixelFormat::Jpeg,
        "YUYV" => PixelFormat::Yuyv,
        "RGB3" => PixelFormat::Rgb24,
        "GREY" => PixelFormat::Grey,
        other => PixelFormat::Other(other.to_string()),
    }
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// An opened V4L2 capture node.
pub(crate) struct Capture {
    name: String,
    path: PathBuf,
    card: String,
    pix: PixFormat,
    readwrite: bool,
    file: Arc<Mutex<std::fs::File>>,
}

impl Capture {
    /// Opens the node and asks it what it captures; a node that is not a video capture device is
    /// `unsupported`.
    pub(crate) fn open(name: String, path: PathBuf) -> Result<Self, DeviceError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .map_err(|e| io_error(&path, &e))?;
        let fd = file.as_raw_fd();
        let not_v4l2 = |e: nix::Error| {
            DeviceError::Unsupported(format!(
                "{} is not a V4L2 video device: {e}",
                path.display()
            ))
        };
        let mut cap = Capability::default();
        // SAFETY: `fd` is open for the duration of the call and `cap` is a `struct v4l2_capability`.
        unsafe { vidioc_querycap(fd, &raw mut cap) }.map_err(not_v4l2)?;
        let caps = if cap.capabilities & CAP_DEVICE_CAPS != 0 {
            cap.device_caps
        } else {
            cap.capabilities
        };
        if caps & CAP_VIDEO_CAPTURE == 0 {
            return Err(DeviceError::Unsupported(format!(
                "{} ({}) does not capture video",
                path.display(),
                c_string(&cap.card)
            )));
        }
        if caps & (CAP_READWRITE | CAP_STREAMING) == 0 {
            return Err(DeviceError::Unsupported(format!(
                "{} offers neither read() nor streaming I/O",
                path.display()
            )));
        }
        let mut fmt = FormatIoctl {
            type_: BUF_TYPE_VIDEO_CAPTURE,
            fmt: FormatData {
                pix: PixFormat::default(),
                rest: [0; 152],
                _align: [],
            },
        };
        // SAFETY: as above, with a `struct v4l2_format`.
        unsafe { vidioc_g_fmt(fd, &raw mut fmt) }
            .map_err(|e| DeviceError::Io(format!("{}: VIDIOC_G_FMT: {e}", path.display())))?;
        Ok(Self {
            name,
            card: c_string(&cap.card),
            pix: fmt.fmt.pix,
            readwrite: caps & CAP_READWRITE != 0,
            path,
            file: Arc::new(Mutex::new(file)),
        })
    }
}

fn wait_readable(file: &std::fs::File, deadline: Instant) -> Result<(), DeviceError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(DeviceError::Unavailable(format!(
                "no frame within {FRAME_TIMEOUT:?}"
            )));
        }
        let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
        let wait =
            PollTimeout::try_from(left.as_millis().min(1000) as u32).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, wait) {
            Ok(0) | Err(nix::Error::EINTR) => {}
            Ok(_) => return Ok(()),
            Err(e) => return Err(DeviceError::Io(format!("poll: {e}"))),
        }
    }
}

/// One frame through `read()`.
fn read_frame(
    path: &Path,
    pix: &PixFormat,
    file: &mut std::fs::File,
) -> Result<Vec<u8>, DeviceError> {
    let deadline = Instant::now() + FRAME_TIMEOUT;
    let mut data = vec![0u8; pix.sizeimage.max(1) as usize];
    loop {
        wait_readable(file, deadline)?;
        match file.read(&mut data) {
            Ok(n) => {
                data.truncate(n);
                return Ok(data);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(io_error(path, &e)),
        }
    }
}

/// One frame from a short memory-mapped stream.
fn stream_frame(path: &Path, file: &std::fs::File) -> Result<Vec<u8>, DeviceError> {
    let fd = file.as_raw_fd();
    let ioctl_err = |what: &str| {
        let path = path.display().to_string();
        let what = what.to_string();
        move |e: nix::Error| DeviceError::Io(format!("{path}: {what}: {e}"))
    };
    let mut req = RequestBuffers {
        count: BUFFERS,
        type_: BUF_TYPE_VIDEO_CAPTURE,
        memory: MEMORY_MMAP,
        ..RequestBuffers::default()
    };
    // SAFETY: `fd` is open and `req` is a `struct v4l2_requestbuffers`.
    unsafe { vidioc_reqbufs(fd, &raw mut req) }.map_err(ioctl_err("VIDIOC_REQBUFS"))?;
    let mut maps = Mappings {
        maps: Vec::new(),
        fd,
        streaming: false,
    };
    for index in 0..req.count {
        let mut buf = Buffer::new(index);
        // SAFETY: as above, with a `struct v4l2_buffer`.
        unsafe { vidioc_querybuf(fd, &raw mut buf) }.map_err(ioctl_err("VIDIOC_QUERYBUF"))?;
        let len = std::num::NonZeroUsize::new(buf.length as usize)
            .ok_or_else(|| DeviceError::Io("the driver offered an empty buffer".into()))?;
        // SAFETY: maps `length` bytes at the driver's offset of an open V4L2 node, read-only and
        // shared; unmapped by `Mappings::drop` before the buffers are released.
        let ptr = unsafe {
            nix::sys::mman::mmap(
                None,
                len,
                nix::sys::mman::ProtFlags::PROT_READ,
                nix::sys::mman::MapFlags::MAP_SHARED,
                file.as_fd(),
                buf.offset(),
            )
        }
        .map_err(ioctl_err("mmap"))?;
        maps.maps.push((ptr, len));
        // SAFETY: as above.
        unsafe { vidioc_qbuf(fd, &raw mut buf) }.map_err(ioctl_err("VIDIOC_QBUF"))?;
    }
    let kind = BUF_TYPE_VIDEO_CAPTURE as libc::c_int;
    // SAFETY: `fd` is open and `kind` is the int the ioctl expects.
    unsafe { vidioc_streamon(fd, &raw const kind) }.map_err(ioctl_err("VIDIOC_STREAMON"))?;
    maps.streaming = true;
    let deadline = Instant::now() + FRAME_TIMEOUT;
    loop {
        wait_readable(file, deadline)?;
        let mut buf = Buffer::new(0);
        // SAFETY: as above, with a `struct v4l2_buffer`.
        match unsafe { vidioc_dqbuf(fd, &raw mut buf) } {
            Ok(_) => {
                let (ptr, len) = maps.maps.get(buf.index as usize).copied().ok_or_else(|| {
                    DeviceError::Io(format!("the driver dequeued unknown buffer {}", buf.index))
                })?;
                let used = (buf.bytesused as usize).min(len.get());
                // SAFETY: `ptr` maps `len` readable bytes while `maps` lives; `used <= len`.
                let data = unsafe { std::slice::from_raw_parts(ptr.as_ptr().cast::<u8>(), used) };
                return Ok(data.to_vec());
            }
            Err(nix::Error::EAGAIN | nix::Error::EINTR) => {}
            Err(e) => return Err(ioctl_err("VIDIOC_DQBUF")(e)),
        }
    }
}

/// The mapped buffers of one capture, unmapped and released on drop.
struct Mappings {
    maps: Vec<(std::ptr::NonNull<libc::c_void>, std::num::NonZeroUsize)>,
    fd: libc::c_int,
    streaming: bool,
}

impl Drop for Mappings {
    fn drop(&mut self) {
        if self.streaming {
            let kind = BUF_TYPE_VIDEO_CAPTURE as libc::c_int;
            // SAFETY: `fd` is still open (the capture holds the file while `Mappings` lives).
            let _ = unsafe { vidioc_streamoff(self.fd, &raw const kind) };
        }
        for (ptr, len) in self.maps.drain(..) {
            // SAFETY: each pair is a mapping made by `stream_frame` and not yet unmapped.
            let _ = unsafe { nix::sys::mman::munmap(ptr, len.get()) };
        }
        let mut req = RequestBuffers {
            count: 0,
            type_: BUF_TYPE_VIDEO_CAPTURE,
            memory: MEMORY_MMAP,
            ..RequestBuffers::default()
        };
        // SAFETY: releases the buffers of this open fd; nothing maps them any more.
        let _ = unsafe { vidioc_reqbufs(self.fd, &raw mut req) };
    }
}

#[async_trait::async_trait]
impl Camera for Capture {
    async fn describe(&self) -> Result<CameraInfo, DeviceError> {
        Ok(CameraInfo {
            name: if self.card.is_empty() {
                self.name.clone()
            } else {
                self.card.clone()
            },
            backend: "v4l2".into(),
            width: self.pix.width,
            height: self.pix.height,
            format: format_of(self.pix.pixelformat),
        })
    }

    async fn capture(&self) -> Result<Frame, DeviceError> {
        let file = Arc::clone(&self.file);
        let path = self.path.clone();
        let pix = self.pix;
        let readwrite = self.readwrite;
        let data = tokio::task::spawn_blocking(move || {
            let mut file = file.lock().expect("not poisoned");
            if readwrite {
                read_frame(&path, &pix, &mut file)
            } else {
                stream_frame(&path, &file)
            }
        })
        .await
        .map_err(|e| DeviceError::Io(format!("V4L2 capture task failed: {e}")))??;
        Ok(Frame {
            width: self.pix.width,
            height: self.pix.height,
            format: format_of(self.pix.pixelformat),
            timestamp: now_ns(),
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fourccs_name_formats() {
        assert_eq!(fourcc(u32::from_le_bytes(*b"YUYV")), "YUYV");
        assert_eq!(format_of(u32::from_le_bytes(*b"MJPG")), PixelFormat::Mjpeg);
        assert_eq!(
            format_of(u32::from_le_bytes(*b"NV12")),
            PixelFormat::Other("NV12".into())
        );
    }

    #[test]
    fn a_file_that_is_not_a_video_node_is_unsupported() {
        let err = Capture::open("x".into(), "/dev/null".into()).err().unwrap();
        assert!(matches!(err, DeviceError::Unsupported(_)), "{err:?}");
    }
}
