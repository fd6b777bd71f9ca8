//! AES-256-XTS: IEEE 1619 known-answer vector and a cross-check against the `xts-mode` crate.

use aes::cipher::{Array, KeyInit};
use proptest::prelude::*;
use sqlite_tde::crypto::{DataKey, Domain, XtsCipher, DATA_UNIT};

const V10_KEY: &str = "27182818284590452353602874713526624977572470936999595749669676273141592653589793238462643383279502884197169399375105820974944592";
const V10_CT: &str = "1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b5d31e276f8fe4a8d66b317f9ac683f44680a86ac35adfc3345befecb4bb188fd5776926c49a3095eb108fd1098baec70aaa66999a72a82f27d848b21d4a741b0c5cd4d5fff9dac89aeba122961d03a757123e9870f8acf1000020887891429ca2a3e7a7d7df7b10355165c8b9a6d0a7de8b062c4500dc4cd120c0f7418dae3d0b5781c34803fa75421c790dfe1de1834f280d7667b327f6c8cd7557e12ac3a0f93ec05c52e0493ef31a12d3d9260f79a289d6a379bc70c50841473d1a8cc81ec583e9645e07b8d9670655ba5bbcfecc6dc3966380ad8fecb17b6ba02469a020a84e18e8f84252070c13e9f1f289be54fbc481457778f616015e1327a02b140f1505eb309326d68378f8374595c849d84f4c333ec4423885143cb47bd71c5edae9be69a2ffeceb1bec9de244fbe15992b11b77c040f12bd8f6a975a44a0f90c29a9abc3d4d893927284c58754cce294529f8614dcd2aba991925fedc4ae74ffac6e333b93eb4aff0479da9a410e4450e0dd7ae4c6e2910900575da401fc07059f645e8b7e9bfdef33943054ff84011493c27b3429eaedb4ed5376441a77ed43851ad77f16f541dfd269d50d6a5f14fb0aab1cbb4c1550be97f7ab4066193c4caa773dad38014bd2092fa755c824bb5e54c4f36ffda9fcea70b9c6e693e148c151";

#[test]
fn ieee1619_vector10_aes256_512_byte_unit() {
    let key = DataKey::from_slice(&hex::decode(V10_KEY).unwrap()).unwrap();
    let cipher = XtsCipher::new(&key);
    let pt: Vec<u8> = (0..512).map(|i| (i % 256) as u8).collect();
    let mut buf = pt.clone();
    cipher.unit_segment(0xff, 0, &mut buf, true);
    assert_eq!(hex::encode(&buf), V10_CT);
    // Any aligned sub-range of the unit encrypts independently (no ciphertext stealing):
    let mut mid = pt[160..320].to_vec();
    cipher.unit_segment(0xff, 10, &mut mid, true);
    assert_eq!(mid, &buf[160..320]);
    cipher.unit_segment(0xff, 0, &mut buf, false);
    assert_eq!(buf, pt);
}

#[test]
fn equal_key_halves_are_rejected() {
    let mut k = [7u8; 64];
    k[0] = 1;
    k[32] = 1;
    assert!(DataKey::from_slice(&k).is_err());
    assert!(DataKey::from_slice(&[0u8; 63]).is_err());
}

#[test]
fn domains_separate_equal_plaintext_at_equal_offsets() {
    let key = DataKey::generate().unwrap();
    let c = XtsCipher::new(&key);
    let mut a = vec![0x41u8; 4096];
    let mut b = a.clone();
    c.encrypt(Domain::Database, 8192, &mut a);
    c.encrypt(Domain::Wal, 8192, &mut b);
    assert_ne!(a, b);
}

fn reference(key: &[u8], domain: Domain, offset: u64, data: &mut [u8], encrypt: bool) {
    let xts = xts_mode::Xts128::new(
        aes::Aes256::new_from_slice(&key[..32]).unwrap(),
        aes::Aes256::new_from_slice(&key[32..]).unwrap(),
    );
    // xts-mode works on whole sectors from sector 0; walk the range unit by unit.
    let mut pos = offset;
    let mut rest = data;
    while !rest.is_empty() {
        let unit = pos / DATA_UNIT as u64;
        let in_unit = (pos % DATA_UNIT as u64) as usize;
        let take = (DATA_UNIT - in_unit).min(rest.len());
        // Encrypt a full unit of scratch with our bytes placed at their offset, then copy back.
        let mut full = vec![0u8; DATA_UNIT];
        full[in_unit..in_unit + take].copy_from_slice(&rest[..take]);
        let tweak = Array::from(domain.tweak(unit).to_le_bytes());
        if encrypt {
            xts.encrypt_sector(&mut full, tweak);
        } else {
            xts.decrypt_sector(&mut full, tweak);
        }
        rest[..take].copy_from_slice(&full[in_unit..in_unit + take]);
        let (_, tail) = rest.split_at_mut(take);
        rest = tail;
        pos += take as u64;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn matches_xts_mode_crate(blocks in 1usize..700, start_block in 0u64..2000, seed in any::<u64>()) {
        let key = DataKey::generate().unwrap();
        let data: Vec<u8> = (0..blocks * 16).map(|i| (i as u64 ^ seed).wrapping_mul(0x9e3779b97f4a7c15) as u8).collect();
        let offset = start_block * 16;
        let mut ours = data.clone();
        XtsCipher::new(&key).encrypt(Domain::Journal, offset, &mut ours);
        let mut theirs = data.clone();
        reference(key.expose(), Domain::Journal, offset, &mut theirs, true);
        prop_assert_eq!(&ours, &theirs);
        XtsCipher::new(&key).decrypt(Domain::Journal, offset, &mut ours);
        reference(key.expose(), Domain::Journal, offset, &mut theirs, false);
        prop_assert_eq!(&ours, &data);
        prop_assert_eq!(&theirs, &data);
    }
}
