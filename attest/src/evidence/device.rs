//! Real SNP reports from the guest device: `/dev/sev-guest` (kernel 6.x, `SNP_GET_REPORT`) or `/dev/sev`
//! (kernel 5.x as on older ACI hosts, `SEV_SNP_GUEST_MSG_REPORT`). The VCEK chain and the UVM endorsement come
//! from the host: ACI's security context, or on AKS THIM and the node's reference-info file ([`super::host`]).
//!
//! The ioctl argument structs mirror the kernel UAPI headers byte for byte; their sizes and offsets are
//! unit-tested against the documented layouts since the ioctls cannot run outside an SNP guest.
#![allow(unsafe_code)]

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use crate::error::EvidenceError;
use crate::evidence::host::{HostSources, Origin, fetch_thim_blocking};
use crate::evidence::thim::UvmInformation;
use crate::evidence::{Attester, Evidence};
use crate::report::REPORT_LEN;

/// Kernel 6.x guest device.
pub const SEV_GUEST_DEVICE: &str = "/dev/sev-guest";
/// Kernel 5.x (ACI) guest device.
pub const SEV_DEVICE_5X: &str = "/dev/sev";

const fn iowr(ty: u8, nr: u8, size: usize) -> u64 {
    (3u64 << 30) | ((size as u64) << 16) | ((ty as u64) << 8) | nr as u64
}

/// `SNP_GET_REPORT = _IOWR('S', 0x0, struct snp_guest_request_ioctl)`.
pub const SNP_GET_REPORT: u64 = iowr(b'S', 0, size_of::<SnpGuestRequestIoctl>());
/// `SEV_SNP_GUEST_MSG_REPORT = _IOWR('S', 0x1, struct sev_snp_guest_request)` (5.x).
pub const SEV_SNP_GUEST_MSG_REPORT: u64 = iowr(b'S', 1, size_of::<SevSnpGuestRequest5>());

/// MSG_REPORT_REQ (96 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SnpReportReq {
    /// report_data.
    pub user_data: [u8; 64],
    /// VMPL to report at (0).
    pub vmpl: u32,
    /// Reserved, zero.
    pub rsvd: [u8; 28],
}

/// MSG_REPORT_RSP as seen by user space (the 6.x response buffer is 4000 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SnpReportResp {
    /// `status u32, report_size u32, reserved[24], report[1184], padding`.
    pub data: [u8; 4000],
}

/// `struct snp_guest_request_ioctl` (kernel 6.x, 32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SnpGuestRequestIoctl {
    /// Message version (1).
    pub msg_version: u8,
    /// Address of the request.
    pub req_data: u64,
    /// Address of the response.
    pub resp_data: u64,
    /// Firmware / VMM error (out).
    pub exitinfo2: u64,
}

/// `struct sev_snp_guest_request` (kernel 5.x, 40 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SevSnpGuestRequest5 {
    /// SNP_MSG_REPORT_REQ = 5.
    pub req_msg_type: u8,
    /// SNP_MSG_REPORT_RSP = 6.
    pub rsp_msg_type: u8,
    /// Message version (1).
    pub msg_version: u8,
    /// Request length (96).
    pub request_len: u16,
    /// Address of the request.
    pub request_uaddr: u64,
    /// Response length (1280).
    pub response_len: u16,
    /// Address of the response.
    pub response_uaddr: u64,
    /// Firmware error (out).
    pub error: u32,
}

/// Extract the report from a MSG_REPORT_RSP buffer: status must be 0 and report_size 1184 (or 0 from
/// firmware that leaves it unset).
pub fn report_from_response(resp: &[u8]) -> Result<Vec<u8>, String> {
    if resp.len() < 32 + REPORT_LEN {
        return Err(format!("response of {} bytes is too short", resp.len()));
    }
    let status = u32::from_le_bytes([resp[0], resp[1], resp[2], resp[3]]);
    if status != 0 {
        return Err(format!("firmware status {status:#x}"));
    }
    let size = u32::from_le_bytes([resp[4], resp[5], resp[6], resp[7]]) as usize;
    if size != 0 && size != REPORT_LEN {
        return Err(format!("report_size {size}, expected {REPORT_LEN}"));
    }
    Ok(resp[32..32 + REPORT_LEN].to_vec())
}

fn request(report_data: &[u8; 64]) -> SnpReportReq {
    SnpReportReq {
        user_data: *report_data,
        vmpl: 0,
        rsvd: [0; 28],
    }
}

fn get_report_6x(path: &Path, report_data: &[u8; 64]) -> Result<Vec<u8>, EvidenceError> {
    let dev_err = |detail: String| EvidenceError::Device {
        device: path.display().to_string(),
        detail,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| dev_err(format!("open: {e}")))?;
    let req = request(report_data);
    let mut resp = Box::new(SnpReportResp { data: [0; 4000] });
    let mut arg = SnpGuestRequestIoctl {
        msg_version: 1,
        req_data: &req as *const SnpReportReq as u64,
        resp_data: &mut *resp as *mut SnpReportResp as u64,
        exitinfo2: 0,
    };
    // SAFETY: `arg` points to `req` and `resp`, which are live, correctly sized #[repr(C)] buffers for the
    // whole call; the kernel writes at most size_of::<SnpReportResp>() bytes into `resp` and into `arg`.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            SNP_GET_REPORT as _,
            &mut arg as *mut SnpGuestRequestIoctl,
        )
    };
    if rc < 0 {
        return Err(dev_err(format!(
            "SNP_GET_REPORT: {} (fw_err {:#x})",
            std::io::Error::last_os_error(),
            arg.exitinfo2
        )));
    }
    report_from_response(&resp.data).map_err(dev_err)
}

fn get_report_5x(path: &Path, report_data: &[u8; 64]) -> Result<Vec<u8>, EvidenceError> {
    let dev_err = |detail: String| EvidenceError::Device {
        device: path.display().to_string(),
        detail,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| dev_err(format!("open: {e}")))?;
    let req = request(report_data);
    let mut resp = vec![0u8; 1280];
    let mut arg = SevSnpGuestRequest5 {
        req_msg_type: 5,
        rsp_msg_type: 6,
        msg_version: 1,
        request_len: size_of::<SnpReportReq>() as u16,
        request_uaddr: &req as *const SnpReportReq as u64,
        response_len: 1280,
        response_uaddr: resp.as_mut_ptr() as u64,
        error: 0,
    };
    // SAFETY: `arg` points to `req` (96 bytes) and `resp` (1280 bytes, the length given in response_len),
    // both live for the whole call; the kernel writes only within those lengths and into `arg`.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            SEV_SNP_GUEST_MSG_REPORT as _,
            &mut arg as *mut SevSnpGuestRequest5,
        )
    };
    if rc < 0 {
        return Err(dev_err(format!(
            "SEV_SNP_GUEST_MSG_REPORT: {} (fw error {:#x})",
            std::io::Error::last_os_error(),
            arg.error
        )));
    }
    report_from_response(&resp).map_err(dev_err)
}

/// Attester backed by the SNP guest device, with the host's certificates and endorsement ([`HostSources`]).
#[derive(Debug)]
pub struct SnpDeviceAttester {
    device: PathBuf,
    legacy: bool,
    uvm: RwLock<UvmInformation>,
    /// THIM's URL when the chain came from THIM (it is asked again when the reported TCB moves on).
    thim: Option<String>,
}

impl SnpDeviceAttester {
    /// [`Self::open_with`] the platform's default places ([`HostSources::platform`]).
    pub fn open() -> Result<Self, EvidenceError> {
        Self::open_with(&HostSources::platform(None, None))
    }

    /// Find the device, then gather the host's inputs from `sources`. Fails with [`EvidenceError::NoDevice`] when
    /// there is no SNP guest device (no fallback), and when no VCEK chain is found (the error names each place
    /// looked at and what THIM answered).
    pub fn open_with(sources: &HostSources) -> Result<Self, EvidenceError> {
        let (device, legacy) = if Path::new(SEV_GUEST_DEVICE).exists() {
            (PathBuf::from(SEV_GUEST_DEVICE), false)
        } else if Path::new(SEV_DEVICE_5X).exists() {
            (PathBuf::from(SEV_DEVICE_5X), true)
        } else {
            return Err(EvidenceError::NoDevice);
        };
        let inputs = sources.gather()?;
        let thim = match inputs.certs_from {
            Origin::Thim(url) => Some(url),
            _ => None,
        };
        Ok(Self {
            device,
            legacy,
            uvm: RwLock::new(inputs.uvm),
            thim,
        })
    }

    /// UVM information in use.
    pub fn uvm(&self) -> UvmInformation {
        self.uvm.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// When the chain came from THIM and the report's reported TCB is not the one its VCEK was issued for (the host
    /// took a firmware update since), asks THIM again and keeps the answer if it is for the reported TCB.
    fn refresh_if_stale(&self, report: &[u8]) {
        let (Some(url), Some(reported)) = (&self.thim, crate::evidence::thim::reported_tcb(report)) else {
            return;
        };
        let current = self.uvm().host_amd_certs.and_then(|c| c.tcbm().ok());
        if current == Some(reported) {
            return;
        }
        match fetch_thim_blocking(url) {
            Ok(certs) if certs.tcbm().ok() == Some(reported) => {
                tracing::info!(tcbm = %certs.tcbm, "THIM certificate refreshed for the reported TCB");
                self.uvm.write().unwrap_or_else(|p| p.into_inner()).host_amd_certs = Some(certs);
            }
            Ok(certs) => tracing::warn!(tcbm = %certs.tcbm, reported = format!("{reported:016x}"),
                                        "THIM still serves a VCEK for another TCB"),
            Err(e) => tracing::warn!(url, "refreshing the THIM certificate: THIM {e}"),
        }
    }
}

impl Attester for SnpDeviceAttester {
    fn evidence(&self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError> {
        let report = if self.legacy {
            get_report_5x(&self.device, report_data)?
        } else {
            get_report_6x(&self.device, report_data)?
        };
        self.refresh_if_stale(&report);
        self.uvm.read().unwrap_or_else(|p| p.into_inner()).evidence(report)
    }
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn ioctl_structs_match_kernel_layouts() {
        assert_eq!(size_of::<SnpReportReq>(), 96);
        assert_eq!(offset_of!(SnpReportReq, vmpl), 64);
        assert_eq!(size_of::<SnpGuestRequestIoctl>(), 32);
        assert_eq!(offset_of!(SnpGuestRequestIoctl, req_data), 8);
        assert_eq!(offset_of!(SnpGuestRequestIoctl, resp_data), 16);
        assert_eq!(offset_of!(SnpGuestRequestIoctl, exitinfo2), 24);
        assert_eq!(size_of::<SevSnpGuestRequest5>(), 40);
        assert_eq!(offset_of!(SevSnpGuestRequest5, request_len), 4);
        assert_eq!(offset_of!(SevSnpGuestRequest5, request_uaddr), 8);
        assert_eq!(offset_of!(SevSnpGuestRequest5, response_len), 16);
        assert_eq!(offset_of!(SevSnpGuestRequest5, response_uaddr), 24);
        assert_eq!(offset_of!(SevSnpGuestRequest5, error), 32);
        assert_eq!(SNP_GET_REPORT, 0xC020_5300);
        assert_eq!(SEV_SNP_GUEST_MSG_REPORT, 0xC028_5301);
    }

    #[test]
    fn response_parsing_checks_status_and_size() {
        let mut resp = vec![0u8; 1280];
        resp[32] = 2;
        resp[4..8].copy_from_slice(&(REPORT_LEN as u32).to_le_bytes());
        assert_eq!(report_from_response(&resp).unwrap()[0], 2);
        resp[0] = 0x16;
        assert!(report_from_response(&resp).unwrap_err().contains("status"));
        resp[0] = 0;
        resp[4..8].copy_from_slice(&100u32.to_le_bytes());
        assert!(report_from_response(&resp).unwrap_err().contains("report_size"));
        assert!(report_from_response(&resp[..100]).is_err());
    }
}
