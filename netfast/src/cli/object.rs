//! `netfast object`: what the embedded eBPF object contains.

use anyhow::Context as _;

pub fn run() -> anyhow::Result<()> {
    let obj =
        aya_obj::Object::parse(netfast::EBPF_OBJECT).context("parsing the embedded object")?;
    println!("eBPF object: {} bytes", netfast::EBPF_OBJECT.len());
    let mut programs: Vec<_> = obj.programs.keys().collect();
    programs.sort();
    for p in programs {
        println!("program {p}");
    }
    let mut maps: Vec<_> = obj.maps.iter().collect();
    maps.sort_by_key(|(name, _)| *name);
    for (name, map) in maps {
        println!(
            "map {name}: type {} key {} value {} max_entries {}",
            map.map_type(),
            map.key_size(),
            map.value_size(),
            map.max_entries()
        );
    }
    Ok(())
}
