//! The host's machine id, the input of MAC derivation.

use std::fs;
use std::io;
use std::path::Path;

use crate::api::fsutil::{random_bytes, write_atomic};
use crate::naming::MachineId;

/// Reads `/etc/machine-id`; when it is absent or invalid, uses (creating it once) a random id
/// stored as `machine-id` in `state_dir`, so MACs stay stable across restarts either way.
pub fn load(etc_machine_id: &Path, state_dir: &Path) -> io::Result<MachineId> {
    if let Some(id) = fs::read_to_string(etc_machine_id)
        .ok()
        .and_then(|t| MachineId::parse(&t))
    {
        return Ok(id);
    }
    let ours = state_dir.join("machine-id");
    if let Some(id) = fs::read_to_string(&ours)
        .ok()
        .and_then(|t| MachineId::parse(&t))
    {
        return Ok(id);
    }
    let mut bytes = [0u8; 16];
    random_bytes(&mut bytes)?;
    let id = MachineId(bytes);
    fs::create_dir_all(state_dir)?;
    write_atomic(&ours, format!("{id}\n").as_bytes()).map_err(io::Error::other)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_back_to_a_stable_stored_id() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-file");
        let a = load(&missing, dir.path()).unwrap();
        let b = load(&missing, dir.path()).unwrap();
        assert_eq!(a, b);
        let etc = dir.path().join("etc-machine-id");
        fs::write(&etc, "0123456789abcdef0123456789abcdef\n").unwrap();
        assert_eq!(
            load(&etc, dir.path()).unwrap().to_string(),
            "0123456789abcdef0123456789abcdef"
        );
    }
}
