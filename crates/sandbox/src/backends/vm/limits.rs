//! The microVM backends' limits: the VM's own size. Memory is the guest's RAM
//! (`[vm] memory_mb`, default 512 MiB): a command that needs more is killed by the
//! guest's OOM killer, and nothing in the VM can take memory from the host beyond it
//! (plus the VMM's own few MiB). CPU is the number of vCPUs (`[vm] vcpus`, default 2).
//! Processes are bounded by the guest kernel's own limits inside that memory.
//! `[isolation] memory_mb`/`cpus` apply to the other backends; `[vm]` sizes the VM.

use crate::VmSpec;

/// One line for `sandbox doctor` and the status panel.
pub fn vm_limits(vm: &VmSpec) -> String {
    format!(
        "memory: {} MiB of guest RAM, cpus: {} vCPU(s), processes: inside the VM",
        vm.memory_mb, vm.vcpus
    )
}
