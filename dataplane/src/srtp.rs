//! SRTP sender: seals outgoing RTP for a DTLS-SRTP association.
//!
//! An egress peer forwards the same plain packet to many subscribers and must encrypt it
//! once per subscriber with that subscriber's keys. str0m's own SRTP context is private to
//! its `Rtc`, so this module does the sending half itself, byte for byte as libsrtp
//! (browsers) and str0m expect it:
//! - SRTP_AES128_CM_HMAC_SHA1_80 (RFC 3711): AES-128 counter mode, then an 80-bit
//!   HMAC-SHA1 tag over the header, the encrypted payload and the rollover counter;
//! - SRTP_AEAD_AES_128_GCM and SRTP_AEAD_AES_256_GCM (RFC 7714): AES-GCM with the RTP
//!   header as associated data and a 16-byte tag.
//!
//! Only RTP is protected here. RTCP and decryption stay with str0m.
//!
//! The session keys come from the DTLS exporter output with the SRTP key derivation
//! function (RFC 3711 section 4.3, key_derivation_rate 0). The ciphers and HMAC-SHA1 are
//! aws-lc-rs, str0m's own crypto backend, used directly so that every key (the AES key, the
//! GCM key, the HMAC's padded key) is set up once per session and each packet is sealed in
//! place in the buffer it is sent from: str0m's provider API sets the AES-CM key and the
//! HMAC key up again for every packet and seals from one buffer into another.

use std::fmt;

use aws_lc_rs::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::cipher::{AES_128, AES_256, EncryptingKey, EncryptionContext, UnboundCipherKey};
use aws_lc_rs::hmac;
use aws_lc_rs::iv::FixedLength;
use str0m::crypto::dtls::SrtpProfile;

/// KDF label of the RTP encryption key (RFC 3711 section 4.3.1).
const LABEL_RTP_ENCRYPTION: u8 = 0x00;
/// KDF label of the RTP authentication key.
const LABEL_RTP_AUTH: u8 = 0x01;
/// KDF label of the RTP session salt.
const LABEL_RTP_SALT: u8 = 0x02;

/// Length of the HMAC-SHA1 key of AES-CM (RFC 3711 section 8.2).
const AUTH_KEY_LEN: usize = 20;
/// Bytes of the HMAC-SHA1 output kept as the AES-CM tag (80 bits).
const AES_CM_TAG_LEN: usize = 10;
/// Length of the GCM tag (RFC 7714 section 5.2.1).
const GCM_TAG_LEN: usize = 16;
/// Session salt of AES-CM (112 bits).
const AES_CM_SALT_LEN: usize = 14;
/// Master and session salt of the GCM profiles (96 bits, RFC 7714 section 12).
const GCM_SALT_LEN: usize = 12;
/// The P bit of the first RTP header byte: the payload ends in padding (RFC 3550 5.1).
const RTP_PADDING_BIT: u8 = 0x20;
/// The fixed RTP header: nothing shorter is sealed.
const MIN_RTP_HEADER_LEN: usize = 12;

/// Master key and salt lengths of a profile, or None if this module does not support it.
fn master_lengths(profile: SrtpProfile) -> Option<(usize, usize)> {
    match profile {
        SrtpProfile::AES128_CM_SHA1_80 => Some((16, AES_CM_SALT_LEN)),
        SrtpProfile::AEAD_AES_128_GCM => Some((16, GCM_SALT_LEN)),
        SrtpProfile::AEAD_AES_256_GCM => Some((32, GCM_SALT_LEN)),
        _ => None,
    }
}

/// The SRTP key derivation function (RFC 3711 section 4.3.1) with key_derivation_rate 0.
///
/// Fills `out` with the AES counter-mode keystream for `label` under the master key. The
/// counter block is the master salt XOR (label at byte 7), followed by a 16-bit block
/// counter. The 96-bit GCM master salt is padded with zeros on the right to 112 bits, as
/// libsrtp and str0m do. A 32-byte master key selects AES-256 (RFC 6188, RFC 7714).
/// None if the master key is neither 16 nor 32 bytes long, or the salt longer than 14.
fn derive(master_key: &[u8], master_salt: &[u8], label: u8, out: &mut [u8]) -> Option<()> {
    if master_salt.len() > AES_CM_SALT_LEN {
        return None;
    }
    let mut block = [0u8; 16];
    block[..master_salt.len()].copy_from_slice(master_salt);
    block[7] ^= label;
    // The keystream from that block is counter mode over zeros. Its 128-bit counter runs in
    // the last two bytes for the at most 32 bytes derived here.
    out.fill(0);
    let context = EncryptionContext::Iv128(FixedLength::from(block));
    ctr_key(master_key)?.less_safe_encrypt(out, context).ok()?;
    Some(())
}

/// An AES counter-mode key: AES-128 for a 16-byte key, AES-256 for a 32-byte one.
fn ctr_key(key: &[u8]) -> Option<EncryptingKey> {
    let algorithm = match key.len() {
        16 => &AES_128,
        32 => &AES_256,
        _ => return None,
    };
    EncryptingKey::ctr(UnboundCipherKey::new(algorithm, key).ok()?).ok()
}

/// The AES-CM counter block of a packet (RFC 3711 section 4.1.1):
/// (k_s * 2^16) XOR (SSRC * 2^64) XOR (index * 2^16), index taken modulo 2^48.
fn aes_cm_iv(salt: &[u8; AES_CM_SALT_LEN], ssrc: u32, index: u64) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[..AES_CM_SALT_LEN].copy_from_slice(salt);
    for (byte, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
        *byte ^= s;
    }
    for (byte, i) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
        *byte ^= i;
    }
    iv
}

/// The GCM nonce of a packet (RFC 7714 section 8.1):
/// (0x0000 || SSRC || ROC || SEQ) XOR the session salt. ROC || SEQ is the 48-bit index.
fn gcm_iv(salt: &[u8; GCM_SALT_LEN], ssrc: u32, index: u64) -> [u8; GCM_SALT_LEN] {
    let mut iv = *salt;
    for (byte, s) in iv[2..6].iter_mut().zip(ssrc.to_be_bytes()) {
        *byte ^= s;
    }
    for (byte, i) in iv[6..12].iter_mut().zip(&index.to_be_bytes()[2..]) {
        *byte ^= i;
    }
    iv
}

/// The per-profile session state, every key set up once.
enum Sealer {
    /// Boxed: its keys are 1.7 KB, a GCM key is a pointer.
    AesCm(Box<CmKeys>),
    /// Both GCM profiles: the key's length chose AES-128 or AES-256.
    Gcm {
        key: LessSafeKey,
        salt: [u8; GCM_SALT_LEN],
    },
}

/// AES-CM's keys: the AES key, the session salt and the HMAC-SHA1 key.
struct CmKeys {
    cipher: EncryptingKey,
    salt: [u8; AES_CM_SALT_LEN],
    auth: hmac::Key,
}

/// Seals the RTP packets one side of a DTLS-SRTP association sends.
pub struct SrtpSender {
    profile: SrtpProfile,
    sealer: Sealer,
}

impl fmt::Debug for SrtpSender {
    // Keys stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SrtpSender")
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

impl SrtpSender {
    /// `material` is the DTLS-SRTP exporter output (RFC 5764 4.2: client_write_master_key,
    /// server_write_master_key, client_write_master_salt, server_write_master_salt); `client`
    /// says whether this side was the DTLS client, and so sends with the client's key and salt.
    /// None if `material` has the wrong length for `profile`.
    pub fn new(profile: SrtpProfile, material: &[u8], client: bool) -> Option<SrtpSender> {
        let (key_len, salt_len) = master_lengths(profile)?;
        if material.len() != 2 * (key_len + salt_len) {
            return None;
        }
        let (key_at, salt_at) = if client {
            (0, 2 * key_len)
        } else {
            (key_len, 2 * key_len + salt_len)
        };
        let master_key = &material[key_at..key_at + key_len];
        let master_salt = &material[salt_at..salt_at + salt_len];

        let mut key = [0u8; 32];
        derive(
            master_key,
            master_salt,
            LABEL_RTP_ENCRYPTION,
            &mut key[..key_len],
        )?;
        let mut salt = [0u8; AES_CM_SALT_LEN];
        derive(
            master_key,
            master_salt,
            LABEL_RTP_SALT,
            &mut salt[..salt_len],
        )?;
        let mut auth_key = [0u8; AUTH_KEY_LEN];
        if profile == SrtpProfile::AES128_CM_SHA1_80 {
            derive(master_key, master_salt, LABEL_RTP_AUTH, &mut auth_key)?;
        }
        SrtpSender::from_session_keys(profile, &key[..key_len], &salt[..salt_len], &auth_key)
    }

    /// Builds a sender from session keys, skipping the derivation. The RFC 7714 test
    /// vectors are given this way. `auth_key` is used by AES-CM only. None if a length
    /// does not fit `profile`.
    fn from_session_keys(
        profile: SrtpProfile,
        key: &[u8],
        salt: &[u8],
        auth_key: &[u8],
    ) -> Option<SrtpSender> {
        let sealer = match profile {
            SrtpProfile::AES128_CM_SHA1_80 if key.len() == 16 && auth_key.len() == AUTH_KEY_LEN => {
                Sealer::AesCm(Box::new(CmKeys {
                    cipher: ctr_key(key)?,
                    salt: salt.try_into().ok()?,
                    auth: hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, auth_key),
                }))
            }
            SrtpProfile::AEAD_AES_128_GCM if key.len() == 16 => Sealer::Gcm {
                key: LessSafeKey::new(UnboundKey::new(&AES_128_GCM, key).ok()?),
                salt: salt.try_into().ok()?,
            },
            SrtpProfile::AEAD_AES_256_GCM if key.len() == 32 => Sealer::Gcm {
                key: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).ok()?),
                salt: salt.try_into().ok()?,
            },
            _ => return None,
        };
        Some(SrtpSender { profile, sealer })
    }

    /// Appends to `out` one SRTP packet: `header` (the plain RTP header, extensions included,
    /// left unencrypted), then `payload` encrypted, then the auth tag. `index` is the packet's
    /// 48-bit SRTP index (ROC << 16 | sequence number), which the caller knows exactly.
    ///
    /// Nothing is allocated when `out` has room for `header`, `payload` and
    /// [`overhead`](Self::overhead). Nothing is appended if `header` is shorter than the
    /// 12-byte fixed RTP header, or if the crypto backend fails (aws-lc-rs does not for
    /// packet sizes), so a caller can tell by `out`'s length.
    pub fn protect_rtp(
        &mut self,
        header: &[u8],
        payload: &[u8],
        ssrc: u32,
        index: u64,
        out: &mut Vec<u8>,
    ) {
        self.protect_rtp_padded(header, payload, 0, ssrc, index, out);
    }

    /// [`protect_rtp`](Self::protect_rtp) with `padding` bytes of RTP padding (RFC 3550
    /// 5.1) after the payload, encrypted with it: the padding bit is set in the header and
    /// the last padding byte holds the count. Receivers drop the padding with the packet's
    /// SRTP layer; 0 adds none.
    pub fn protect_rtp_padded(
        &mut self,
        header: &[u8],
        payload: &[u8],
        padding: u8,
        ssrc: u32,
        index: u64,
        out: &mut Vec<u8>,
    ) {
        if header.len() < MIN_RTP_HEADER_LEN {
            return;
        }
        let padding = usize::from(padding);
        let start = out.len();
        let body = start + header.len();
        let end = body + payload.len() + padding;
        out.reserve(header.len() + payload.len() + padding + self.overhead());
        out.extend_from_slice(header);
        out.extend_from_slice(payload);
        if padding > 0 {
            out[start] |= RTP_PADDING_BIT;
            out.resize(end - 1, 0);
            out.push(padding as u8);
        }

        let sealed = match &self.sealer {
            Sealer::AesCm(keys) => {
                let CmKeys { cipher, salt, auth } = &**keys;
                let iv = aes_cm_iv(salt, ssrc, index);
                let context = EncryptionContext::Iv128(FixedLength::from(iv));
                let encrypted = body == end
                    || cipher
                        .less_safe_encrypt(&mut out[body..end], context)
                        .is_ok();
                if encrypted {
                    let roc = ((index >> 16) as u32).to_be_bytes();
                    let mut mac = hmac::Context::with_key(auth);
                    mac.update(&out[start..end]);
                    mac.update(&roc);
                    out.extend_from_slice(&mac.sign().as_ref()[..AES_CM_TAG_LEN]);
                }
                encrypted
            }
            Sealer::Gcm { key, salt } => {
                let nonce = Nonce::assume_unique_for_key(gcm_iv(salt, ssrc, index));
                let (aad, text) = out[start..].split_at_mut(header.len());
                match key.seal_in_place_separate_tag(nonce, Aad::from(&*aad), text) {
                    Ok(tag) => {
                        out.extend_from_slice(tag.as_ref());
                        true
                    }
                    Err(_) => false,
                }
            }
        };
        if !sealed {
            out.truncate(start);
        }
    }

    /// Bytes `protect_rtp` adds after the payload (10 or 16).
    pub fn overhead(&self) -> usize {
        match self.sealer {
            Sealer::AesCm(_) => AES_CM_TAG_LEN,
            Sealer::Gcm { .. } => GCM_TAG_LEN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        assert!(s.len().is_multiple_of(2), "odd hex length");
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn array<const N: usize>(s: &str) -> [u8; N] {
        hex(s).try_into().unwrap()
    }

    const PROFILES: [SrtpProfile; 3] = [
        SrtpProfile::AES128_CM_SHA1_80,
        SrtpProfile::AEAD_AES_128_GCM,
        SrtpProfile::AEAD_AES_256_GCM,
    ];

    /// Deterministic, non-repeating bytes for keying material and payloads.
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(37).wrapping_add(seed) ^ (i >> 8) as u8)
            .collect()
    }

    /// Splits exporter output the way RFC 5764 4.2 lays it out, written independently of
    /// `new`: (client key, server key, client salt, server salt).
    fn split(material: &[u8], key_len: usize) -> (&[u8], &[u8], &[u8], &[u8]) {
        let salt_len = material.len() / 2 - key_len;
        let (keys, salts) = material.split_at(2 * key_len);
        let (client_key, server_key) = keys.split_at(key_len);
        let (client_salt, server_salt) = salts.split_at(salt_len);
        assert_eq!(server_salt.len(), salt_len);
        (client_key, server_key, client_salt, server_salt)
    }

    fn derived(master_key: &[u8], master_salt: &[u8], label: u8, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        derive(master_key, master_salt, label, &mut out).expect("valid lengths");
        out
    }

    // RFC 3711 appendix B.3.
    #[test]
    fn rfc3711_b3_key_derivation() {
        let key = hex("E1F97A0D3E018BE0D64FA32C06DE4139");
        let salt = hex("0EC675AD498AFEEBB6960B3AABE6");
        assert_eq!(
            derived(&key, &salt, LABEL_RTP_ENCRYPTION, 16),
            hex("C61E7A93744F39EE10734AFE3FF7A087")
        );
        assert_eq!(
            derived(&key, &salt, LABEL_RTP_SALT, 14),
            hex("30CBBC08863D8C85D49DB34A9AE1")
        );
        assert_eq!(
            derived(&key, &salt, LABEL_RTP_AUTH, 20),
            hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")
        );
    }

    // RFC 6188 section 7.2: the same PRF keyed with AES-256, as AEAD_AES_256_GCM uses it.
    #[test]
    fn rfc6188_aes_256_key_derivation() {
        let key = hex("f0f04914b513f2763a1b1fa130f10e2998f6f6e43e4309d1e622a0e332b9f1b6");
        let salt = hex("3b04803de51ee7c96423ab5b78d2");
        assert_eq!(
            derived(&key, &salt, LABEL_RTP_ENCRYPTION, 32),
            hex("5ba1064e30ec51613cad926c5a28ef731ec7fb397f70a960653caf06554cd8c4")
        );
        assert_eq!(
            derived(&key, &salt, LABEL_RTP_SALT, 14),
            hex("fa31791685ca444a9e07c6c64e93")
        );
        assert_eq!(
            derived(&key, &salt, LABEL_RTP_AUTH, 20),
            hex("fd9c32d39ed5fbb5a9dc96b30818454d1313dc05")
        );
    }

    // RFC 3711 appendix B.2: with SSRC and index 0 the ciphertext of zeros is the keystream.
    #[test]
    fn rfc3711_b2_aes_cm_keystream() {
        let salt = array::<14>("F0F1F2F3F4F5F6F7F8F9FAFBFCFD");
        assert_eq!(
            aes_cm_iv(&salt, 0, 0).to_vec(),
            hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000")
        );
        let mut sender = SrtpSender::from_session_keys(
            SrtpProfile::AES128_CM_SHA1_80,
            &hex("2B7E151628AED2A6ABF7158809CF4F3C"),
            &salt,
            &[0u8; 20],
        )
        .unwrap();
        let header = hex("800f0000 00000000 00000000");
        let mut out = Vec::new();
        sender.protect_rtp(&header, &[0u8; 48], 0, 0, &mut out);
        assert_eq!(out.len(), 12 + 48 + 10);
        assert_eq!(
            out[12..60].to_vec(),
            hex("E03EAD0935C95E80E166B16DD92B4EB4
                 D23513162B02D0F72A43A2FE4A5F97AB
                 41E95B3BB0A2E8DD477901E4FCA894C0")
        );
    }

    /// RFC 7714 section 16: the RTP packet both GCM vectors seal (SSRC 0x5501a0b2,
    /// sequence number 0xf17b, ROC 0).
    const RFC7714_HEADER: &str = "8040f17b8041f8d35501a0b2";
    const RFC7714_PAYLOAD: &str =
        "47616c6c696120657374206f6d6e69732064697669736120696e207061727465732074726573";
    const RFC7714_SALT: &str = "517569642070726f2071756f";

    fn rfc7714(profile: SrtpProfile, key: &str, expected: &str) {
        let salt = array::<12>(RFC7714_SALT);
        assert_eq!(
            gcm_iv(&salt, 0x5501a0b2, 0xf17b).to_vec(),
            hex("51753c6580c2726f20718414")
        );
        let mut sender = SrtpSender::from_session_keys(profile, &hex(key), &salt, &[]).unwrap();
        let mut out = Vec::new();
        sender.protect_rtp(
            &hex(RFC7714_HEADER),
            &hex(RFC7714_PAYLOAD),
            0x5501a0b2,
            0xf17b,
            &mut out,
        );
        assert_eq!(out, hex(expected));
    }

    // RFC 7714 section 16.1.1.
    #[test]
    fn rfc7714_16_1_aead_aes_128_gcm() {
        rfc7714(
            SrtpProfile::AEAD_AES_128_GCM,
            "000102030405060708090a0b0c0d0e0f",
            "8040f17b8041f8d35501a0b2
             f24de3a3fb34de6cacba861c9d7e4bcabe633bd50d294e6f42a5f47a51c7d19b36de3adf8833
             899d7f27beb16a9152cf765ee4390cce",
        );
    }

    // RFC 7714 section 16.2.1.
    #[test]
    fn rfc7714_16_2_aead_aes_256_gcm() {
        rfc7714(
            SrtpProfile::AEAD_AES_256_GCM,
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
            "8040f17b8041f8d35501a0b2
             32b1de78a822fe12ef9f78fa332e33aab18012389a58e2f3b50b2a0276ffae0f1ba63799b87b
             7aa3db36dfffd6b0f9bb7878d7a76c13",
        );
    }

    /// libsrtp's srtp_validate packet: SSRC 0xcafebabe, sequence number 0x1234, ROC 0.
    const LIBSRTP_HEADER: &str = "800f1234decafbadcafebabe";

    /// Puts a master key and salt in the client or server slots of exporter output whose
    /// other slots hold noise, and seals libsrtp's validation packet through `new`.
    fn libsrtp(profile: SrtpProfile, key: &str, salt: &str, client: bool) -> Vec<u8> {
        let (key, salt) = (hex(key), hex(salt));
        let mut material = pattern(2 * (key.len() + salt.len()), 0x5a);
        let (key_at, salt_at) = if client {
            (0, 2 * key.len())
        } else {
            (key.len(), 2 * key.len() + salt.len())
        };
        material[key_at..key_at + key.len()].copy_from_slice(&key);
        material[salt_at..salt_at + salt.len()].copy_from_slice(&salt);
        let mut sender = SrtpSender::new(profile, &material, client).unwrap();
        let mut out = Vec::new();
        sender.protect_rtp(
            &hex(LIBSRTP_HEADER),
            &[0xab; 16],
            0xcafebabe,
            0x1234,
            &mut out,
        );
        out
    }

    // libsrtp test/srtp_driver.c srtp_validate(): master key and salt to packet, end to end.
    #[test]
    fn libsrtp_validate_aes_cm_from_master_key() {
        let expected = hex("800f1234decafbadcafebabe
             4e55dc4ce79978d88ca4d215949d2402
             b78d6acc99ea179b8dbb");
        for client in [true, false] {
            let out = libsrtp(
                SrtpProfile::AES128_CM_SHA1_80,
                "e1f97a0d3e018be0d64fa32c06de4139",
                "0ec675ad498afeebb6960b3aabe6",
                client,
            );
            assert_eq!(out, expected, "client {client}");
        }
    }

    // libsrtp test/srtp_driver.c srtp_validate_gcm(): checks the 96-bit salt in the KDF.
    #[test]
    fn libsrtp_validate_gcm_from_master_key() {
        let expected = hex("800f1234decafbadcafebabe
             c5002ede04cfdd2eb91159e0880aa06e
             d2976826f796b201df3131a127e8a392");
        for client in [true, false] {
            let out = libsrtp(
                SrtpProfile::AEAD_AES_128_GCM,
                "000102030405060708090a0b0c0d0e0f",
                "a0a1a2a3a4a5a6a7a8a9aaab",
                client,
            );
            assert_eq!(out, expected, "client {client}");
        }
    }

    /// str0m's crypto provider: an opener that shares no code with the sealer.
    fn provider() -> str0m::config::CryptoProvider {
        str0m::crypto::from_feature_flags()
    }

    /// Opens a packet sealed by `SrtpSender::new(profile, material, client)` with str0m's
    /// provider's decrypt functions and IVs built here, and returns the payload.
    fn open(
        profile: SrtpProfile,
        material: &[u8],
        client: bool,
        packet: &[u8],
        header_len: usize,
        ssrc: u32,
        index: u64,
    ) -> Vec<u8> {
        let p = provider();
        let key_len = if profile == SrtpProfile::AEAD_AES_256_GCM {
            32
        } else {
            16
        };
        let (client_key, server_key, client_salt, server_salt) = split(material, key_len);
        let (master_key, master_salt) = if client {
            (client_key, client_salt)
        } else {
            (server_key, server_salt)
        };
        let key = derived(master_key, master_salt, LABEL_RTP_ENCRYPTION, key_len);
        let header = &packet[..header_len];
        let roc = (index >> 16) as u32;
        let seq = index as u16;

        if profile == SrtpProfile::AES128_CM_SHA1_80 {
            let salt = derived(master_key, master_salt, LABEL_RTP_SALT, 14);
            let auth_key = derived(master_key, master_salt, LABEL_RTP_AUTH, 20);
            let (authenticated, tag) = packet.split_at(packet.len() - 10);
            let mac = p
                .sha1_hmac_provider
                .sha1_hmac(&auth_key, &[authenticated, &roc.to_be_bytes()]);
            assert_eq!(tag, &mac[..10], "HMAC-SHA1-80 tag");

            // IV = (k_s << 16) ^ (SSRC << 64) ^ (index << 16), as 128-bit integers.
            let k_s = u128::from_be_bytes({
                let mut b = [0u8; 16];
                b[2..].copy_from_slice(&salt);
                b
            });
            let iv = ((k_s << 16) ^ ((ssrc as u128) << 64) ^ ((index as u128) << 16)).to_be_bytes();
            let mut cipher = p
                .srtp_provider
                .aes_128_cm_sha1_80()
                .create_cipher(key.try_into().unwrap(), false);
            let ciphertext = &authenticated[header_len..];
            let mut plain = vec![0u8; ciphertext.len() + 16];
            if !ciphertext.is_empty() {
                cipher.decrypt(&iv, ciphertext, &mut plain).unwrap();
            }
            plain.truncate(ciphertext.len());
            plain
        } else {
            let salt = derived(master_key, master_salt, LABEL_RTP_SALT, 12);
            let mut iv = [0u8; 12];
            iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
            iv[6..10].copy_from_slice(&roc.to_be_bytes());
            iv[10..12].copy_from_slice(&seq.to_be_bytes());
            for (b, s) in iv.iter_mut().zip(&salt) {
                *b ^= s;
            }
            let sealed = &packet[header_len..];
            let mut plain = vec![0u8; sealed.len()];
            let n = if profile == SrtpProfile::AEAD_AES_128_GCM {
                p.srtp_provider
                    .aead_aes_128_gcm()
                    .create_cipher(key.try_into().unwrap(), false)
                    .decrypt(&iv, &[header], sealed, &mut plain)
            } else {
                p.srtp_provider
                    .aead_aes_256_gcm()
                    .create_cipher(key.try_into().unwrap(), false)
                    .decrypt(&iv, &[header], sealed, &mut plain)
            }
            .expect("GCM tag verifies");
            plain.truncate(n);
            plain
        }
    }

    // Every profile, both DTLS roles, a header with a CSRC and an extension, several
    // payload sizes and an index past a rollover: the independent opener gets the payload
    // back and the header is untouched.
    #[test]
    fn round_trip_every_profile_and_role() {
        // V=2, X=1, CC=1; CSRC; one-byte-header extension of one word.
        let header = hex("9160 abcd 00112233 0badcafe 01020304 bede0001 10ff0000");
        let ssrc = 0x0badcafe;
        let index = (3u64 << 16) | 0xabcd;
        for profile in PROFILES {
            let (key_len, salt_len) = master_lengths(profile).unwrap();
            let material = pattern(2 * (key_len + salt_len), 7);
            for client in [true, false] {
                let mut sender = SrtpSender::new(profile, &material, client).unwrap();
                for len in [0, 1, 15, 16, 17, 160, 1200] {
                    let payload = pattern(len, 99);
                    let mut out = vec![0xee; 3]; // protect_rtp appends after what is there
                    sender.protect_rtp(&header, &payload, ssrc, index, &mut out);
                    assert_eq!(&out[..3], &[0xee; 3]);
                    let packet = &out[3..];
                    let what = format!("{profile} client {client} len {len}");
                    assert_eq!(
                        packet.len(),
                        header.len() + len + sender.overhead(),
                        "{what}"
                    );
                    assert_eq!(&packet[..header.len()], &header[..], "{what}");
                    if len >= 16 {
                        assert_ne!(&packet[header.len()..][..len], &payload[..], "{what}");
                    }
                    let plain = open(
                        profile,
                        &material,
                        client,
                        packet,
                        header.len(),
                        ssrc,
                        index,
                    );
                    assert_eq!(plain, payload, "{what}");
                }
            }
        }
    }

    // RTP padding is sealed with the payload: the P bit is set in the authenticated header,
    // and the opener gets the payload, then the padding ending in its count.
    #[test]
    fn padding_is_sealed_after_the_payload_and_flagged_in_the_header() {
        let header = hex("80600001 00000000 00000001");
        for profile in PROFILES {
            let (key_len, salt_len) = master_lengths(profile).unwrap();
            let material = pattern(2 * (key_len + salt_len), 5);
            let mut sender = SrtpSender::new(profile, &material, true).unwrap();
            for (len, padding) in [(1000, 1u8), (1000, 16), (0, 3)] {
                let payload = pattern(len, 9);
                let mut out = Vec::new();
                sender.protect_rtp_padded(&header, &payload, padding, 1, 1, &mut out);
                let what = format!("{profile} len {len} padding {padding}");
                let padding = usize::from(padding);
                assert_eq!(
                    out.len(),
                    header.len() + len + padding + sender.overhead(),
                    "{what}"
                );
                assert_eq!(out[0], header[0] | 0x20, "{what}: the P bit");
                assert_eq!(&out[1..header.len()], &header[1..], "{what}");
                let plain = open(profile, &material, true, &out, header.len(), 1, 1);
                assert_eq!(&plain[..len], &payload[..], "{what}");
                assert_eq!(plain.len(), len + padding, "{what}");
                assert_eq!(usize::from(plain[plain.len() - 1]), padding, "{what}");
                assert!(
                    plain[len..plain.len() - 1].iter().all(|b| *b == 0),
                    "{what}"
                );
            }
        }
    }

    // The two roles seal with different keys, and the index and SSRC change the output.
    #[test]
    fn roles_index_and_ssrc_change_the_ciphertext() {
        let header = hex("80600001 00000000 00000001");
        let payload = pattern(64, 1);
        for profile in PROFILES {
            let (key_len, salt_len) = master_lengths(profile).unwrap();
            let material = pattern(2 * (key_len + salt_len), 3);
            let seal = |client: bool, ssrc: u32, index: u64| {
                let mut sender = SrtpSender::new(profile, &material, client).unwrap();
                let mut out = Vec::new();
                sender.protect_rtp(&header, &payload, ssrc, index, &mut out);
                out
            };
            let base = seal(true, 1, 1);
            assert_ne!(base, seal(false, 1, 1), "{profile}");
            assert_ne!(base, seal(true, 2, 1), "{profile}");
            assert_ne!(base, seal(true, 1, 1 + (1 << 16)), "{profile}");
            assert_eq!(base, seal(true, 1, 1), "{profile}");
        }
    }

    #[test]
    fn overhead_per_profile() {
        let expected = [10, 16, 16];
        for (profile, overhead) in PROFILES.into_iter().zip(expected) {
            let (key_len, salt_len) = master_lengths(profile).unwrap();
            let sender = SrtpSender::new(profile, &vec![1; 2 * (key_len + salt_len)], true);
            assert_eq!(sender.unwrap().overhead(), overhead, "{profile}");
        }
    }

    #[test]
    fn wrong_material_length_is_refused() {
        for (profile, len) in PROFILES.into_iter().zip([60, 56, 88]) {
            assert!(SrtpSender::new(profile, &vec![1; len], true).is_some());
            for wrong in [0, len - 1, len + 1, 60, 56, 88] {
                if wrong != len {
                    let sender = SrtpSender::new(profile, &vec![1; wrong], false);
                    assert!(sender.is_none(), "{profile} with {wrong} bytes");
                }
            }
        }
    }

    // With room reserved up front, sealing never reallocates `out`.
    #[test]
    fn no_reallocation_when_out_has_room() {
        let header = hex("80600001 00000000 00000001");
        let payload = pattern(1000, 5);
        for profile in PROFILES {
            let (key_len, salt_len) = master_lengths(profile).unwrap();
            let material = pattern(2 * (key_len + salt_len), 9);
            let mut sender = SrtpSender::new(profile, &material, true).unwrap();
            let mut out = Vec::with_capacity(header.len() + payload.len() + sender.overhead());
            let at = out.as_ptr();
            sender.protect_rtp(&header, &payload, 1, 1, &mut out);
            assert_eq!(out.len(), out.capacity(), "{profile}");
            assert_eq!(out.as_ptr(), at, "{profile}");
        }
    }

    #[test]
    fn short_header_appends_nothing() {
        for profile in PROFILES {
            let (key_len, salt_len) = master_lengths(profile).unwrap();
            let mut sender = SrtpSender::new(profile, &vec![2; 2 * (key_len + salt_len)], true);
            let mut out = vec![1, 2, 3];
            sender
                .as_mut()
                .unwrap()
                .protect_rtp(&[0x80; 11], &[0; 20], 1, 1, &mut out);
            assert_eq!(out, [1, 2, 3], "{profile}");
        }
    }

    #[test]
    fn debug_does_not_print_keys() {
        let sender = SrtpSender::new(SrtpProfile::AEAD_AES_128_GCM, &[0x42; 56], true).unwrap();
        let shown = format!("{sender:?}");
        assert!(shown.contains("AEAD_AES_128_GCM"), "{shown}");
        assert!(!shown.contains("66"), "{shown}");
    }
}
