//! The few bpf(2) commands aya does not offer: raw access to a map whose key and value sizes
//! are known only at run time (an older layout's), and BPF_LINK_UPDATE. Used by
//! [`crate::upgrade`].

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// `BPF_ANY`, `BPF_NOEXIST`, `BPF_EXIST`.
pub const ANY: u64 = 0;
pub const NOEXIST: u64 = 1;
pub const EXIST: u64 = 2;

/// `union bpf_attr` as the map element commands use it.
#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid bpf_attr prefix for `cmd`, of the size passed; the kernel
    // reads and writes only within it and the buffers it points to.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Runs the map element command `cmd` on `map` with these key and value pointers and
/// flags; `Ok(false)` when the kernel answered with one of `absent` (no such key, or the
/// flags forbade the write).
fn map_elem(
    cmd: libc::c_long,
    map: BorrowedFd<'_>,
    (key, value, flags): (u64, u64, u64),
    absent: &[i32],
) -> io::Result<bool> {
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key,
        value,
        flags,
        ..Default::default()
    };
    match sys_bpf(cmd, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error().is_some_and(|n| absent.contains(&n)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The key after `key` (the first one when `None`); `Ok(false)` at the end.
pub fn map_next_key(map: BorrowedFd<'_>, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<bool> {
    let key = key.map_or(0, |k| k.as_ptr() as u64);
    let ptrs = (key, next.as_mut_ptr() as u64, 0);
    map_elem(BPF_MAP_GET_NEXT_KEY, map, ptrs, &[libc::ENOENT])
}

/// The value of `key` into `value`; `Ok(false)` when there is none.
pub fn map_lookup(map: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    let ptrs = (key.as_ptr() as u64, value.as_mut_ptr() as u64, 0);
    map_elem(BPF_MAP_LOOKUP_ELEM, map, ptrs, &[libc::ENOENT])
}

/// Writes `key` → `value` with `flags` ([`ANY`], [`NOEXIST`], [`EXIST`]); `Ok(false)` when
/// the flags forbade it (the key was there, or was not).
pub fn map_update(map: BorrowedFd<'_>, key: &[u8], value: &[u8], flags: u64) -> io::Result<bool> {
    let ptrs = (key.as_ptr() as u64, value.as_ptr() as u64, flags);
    map_elem(
        BPF_MAP_UPDATE_ELEM,
        map,
        ptrs,
        &[libc::EEXIST, libc::ENOENT],
    )
}

/// Opens the object (link, map, program) pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the path"))?;
    #[repr(C)]
    struct Attr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let mut attr = Attr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    let fd = sys_bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The id of a link and of the program it runs (`struct bpf_link_info`'s first fields).
pub fn link_ids(link: BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    #[repr(C)]
    #[derive(Default)]
    struct LinkInfo {
        kind: u32,
        id: u32,
        prog_id: u32,
    }
    #[repr(C)]
    struct Attr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut info = LinkInfo::default();
    let mut attr = Attr {
        bpf_fd: link.as_raw_fd() as u32,
        info_len: std::mem::size_of::<LinkInfo>() as u32,
        info: std::ptr::from_mut(&mut info) as u64,
    };
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok((info.id, info.prog_id))
}

/// Makes `link` run `program` instead of the one it runs, atomically: no packet meets no
/// program (BPF_LINK_UPDATE; TCX and cgroup links support it).
pub fn link_update(link: BorrowedFd<'_>, program: BorrowedFd<'_>) -> io::Result<()> {
    #[repr(C)]
    struct Attr {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let mut attr = Attr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: program.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    sys_bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;

/// Opens the program with id `id`.
pub fn prog_get_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct Attr {
        prog_id: u32,
        next_id: u32,
        open_flags: u32,
    }
    let mut attr = Attr {
        prog_id: id,
        next_id: 0,
        open_flags: 0,
    };
    let fd = sys_bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The ids of the maps a program uses (`struct bpf_prog_info`'s `map_ids`).
pub fn prog_map_ids(program: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    // The prefix of `struct bpf_prog_info` up to `map_ids` (offsets per the UAPI header).
    #[repr(C)]
    #[derive(Default)]
    struct ProgInfo {
        kind: u32,
        id: u32,
        tag: [u8; 8],
        jited_prog_len: u32,
        xlated_prog_len: u32,
        jited_prog_insns: u64,
        xlated_prog_insns: u64,
        load_time: u64,
        created_by_uid: u32,
        nr_map_ids: u32,
        map_ids: u64,
    }
    #[repr(C)]
    struct Attr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let info_of = |info: &mut ProgInfo| {
        let mut attr = Attr {
            bpf_fd: program.as_raw_fd() as u32,
            info_len: std::mem::size_of::<ProgInfo>() as u32,
            info: std::ptr::from_mut(info) as u64,
        };
        sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).map(drop)
    };
    let mut info = ProgInfo::default();
    info_of(&mut info)?;
    let mut ids = vec![0u32; info.nr_map_ids as usize];
    info = ProgInfo {
        nr_map_ids: ids.len() as u32,
        map_ids: ids.as_mut_ptr() as u64,
        ..ProgInfo::default()
    };
    info_of(&mut info)?;
    ids.truncate(info.nr_map_ids as usize);
    Ok(ids)
}
