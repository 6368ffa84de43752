//! Block ciphers behind one object-safe trait: AES, Twofish, Serpent, RC6
//! (RustCrypto crates), MARS (this crate), and the legacy set of the seed's
//! CoreCipher: Blowfish, DES, 3DES and XXTEA with 64-byte blocks.

use cipher::array::Array;
use cipher::{BlockCipherDecrypt, BlockCipherEncrypt, BlockSizeUser, KeyInit};

use crate::error::{Error, Result};

/// A block cipher keyed and ready. ECB on whole blocks only: modes and
/// authentication are built on top (see [`crate::suite`]).
pub trait BlockCipher: Send + Sync {
    /// Which algorithm this is.
    fn algorithm(&self) -> Algorithm;
    /// Block size in bytes.
    fn block_size(&self) -> usize;
    /// Encrypts `data` in place, block by block. Its length must be a multiple of the block size.
    fn encrypt_blocks(&self, data: &mut [u8]) -> Result<()>;
    /// Decrypts `data` in place, block by block. Its length must be a multiple of the block size.
    fn decrypt_blocks(&self, data: &mut [u8]) -> Result<()>;
}

/// The block ciphers this crate offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// AES (Rijndael, 128-bit block); 16, 24 or 32 byte keys.
    Aes,
    /// Twofish; 16, 24 or 32 byte keys.
    Twofish,
    /// Serpent; 16, 24 or 32 byte keys.
    Serpent,
    /// RC6-32/20; 16, 24 or 32 byte keys.
    Rc6,
    /// MARS (IBM, revised 1999 key schedule); 16 to 56 byte keys, multiple of 4.
    Mars,
    /// Blowfish (64-bit block); 1 to 72 byte keys (CoreCipher uses 16).
    Blowfish,
    /// DES (64-bit block); 8 byte key. Legacy only: broken by key size.
    Des,
    /// Triple DES EDE; 16 (two-key) or 24 (three-key) byte keys.
    TripleDes,
    /// XXTEA over 64-byte blocks (16 words), 16 byte key, as CoreCipher's XXTea512.
    Xxtea512,
}

impl Algorithm {
    /// Every algorithm.
    pub const ALL: [Algorithm; 9] = [
        Algorithm::Aes,
        Algorithm::Twofish,
        Algorithm::Serpent,
        Algorithm::Rc6,
        Algorithm::Mars,
        Algorithm::Blowfish,
        Algorithm::Des,
        Algorithm::TripleDes,
        Algorithm::Xxtea512,
    ];

    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Aes => "AES",
            Algorithm::Twofish => "Twofish",
            Algorithm::Serpent => "Serpent",
            Algorithm::Rc6 => "RC6",
            Algorithm::Mars => "MARS",
            Algorithm::Blowfish => "Blowfish",
            Algorithm::Des => "DES",
            Algorithm::TripleDes => "3DES",
            Algorithm::Xxtea512 => "XXTEA-512",
        }
    }

    /// Creates the keyed cipher.
    pub fn new_cipher(self, key: &[u8]) -> Result<Box<dyn BlockCipher>> {
        let bad = || Error::InvalidKeyLength {
            algorithm: self.name(),
            got: key.len(),
        };
        Ok(match self {
            Algorithm::Aes => match key.len() {
                16 => Box::new(Rc::new(
                    self,
                    aes::Aes128::new_from_slice(key).map_err(|_| bad())?,
                )),
                24 => Box::new(Rc::new(
                    self,
                    aes::Aes192::new_from_slice(key).map_err(|_| bad())?,
                )),
                32 => Box::new(Rc::new(
                    self,
                    aes::Aes256::new_from_slice(key).map_err(|_| bad())?,
                )),
                _ => return Err(bad()),
            },
            Algorithm::Twofish => Box::new(crate::twofish::Twofish::new(key)?),
            Algorithm::Serpent => Box::new(crate::serpent::Serpent::new(key)?),
            Algorithm::Rc6 => {
                use cipher::consts::{U16, U20, U24, U32};
                match key.len() {
                    16 => Box::new(Rc::new(
                        self,
                        rc6::RC6::<u32, U20, U16>::new_from_slice(key).map_err(|_| bad())?,
                    )),
                    24 => Box::new(Rc::new(
                        self,
                        rc6::RC6::<u32, U20, U24>::new_from_slice(key).map_err(|_| bad())?,
                    )),
                    32 => Box::new(Rc::new(
                        self,
                        rc6::RC6::<u32, U20, U32>::new_from_slice(key).map_err(|_| bad())?,
                    )),
                    _ => return Err(bad()),
                }
            }
            Algorithm::Mars => Box::new(crate::mars::Mars::new(key)?),
            Algorithm::Blowfish => {
                if key.is_empty() || key.len() > 72 {
                    return Err(bad());
                }
                // The crate's own key schedule, reached through its bcrypt entry
                // points so that every key length Blowfish defines (1..=72 bytes,
                // OpenSSL's upper bound) works, not only 4..=56.
                let mut bf = blowfish::Blowfish::bc_init_state();
                bf.bc_expand_key(key);
                Box::new(Rc::new(self, bf))
            }
            Algorithm::Des => Box::new(Rc::new(
                self,
                des::Des::new_from_slice(key).map_err(|_| bad())?,
            )),
            Algorithm::TripleDes => match key.len() {
                16 => Box::new(Rc::new(
                    self,
                    des::TdesEde2::new_from_slice(key).map_err(|_| bad())?,
                )),
                24 => Box::new(Rc::new(
                    self,
                    des::TdesEde3::new_from_slice(key).map_err(|_| bad())?,
                )),
                _ => return Err(bad()),
            },
            Algorithm::Xxtea512 => Box::new(crate::xxtea::Xxtea512::new(key)?),
        })
    }
}

/// Adapter from a RustCrypto cipher to [`BlockCipher`].
struct Rc<C> {
    alg: Algorithm,
    cipher: C,
}

impl<C> Rc<C> {
    fn new(alg: Algorithm, cipher: C) -> Self {
        Rc { alg, cipher }
    }
}

pub(crate) fn check_aligned(len: usize, block: usize) -> Result<()> {
    if len % block == 0 {
        Ok(())
    } else {
        Err(Error::NotBlockAligned { len, block })
    }
}

impl<C> BlockCipher for Rc<C>
where
    C: BlockCipherEncrypt + BlockCipherDecrypt + BlockSizeUser + Send + Sync,
{
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
    fn block_size(&self) -> usize {
        C::block_size()
    }
    fn encrypt_blocks(&self, data: &mut [u8]) -> Result<()> {
        check_aligned(data.len(), C::block_size())?;
        let (blocks, _) = Array::<u8, C::BlockSize>::slice_as_chunks_mut(data);
        self.cipher.encrypt_blocks(blocks);
        Ok(())
    }
    fn decrypt_blocks(&self, data: &mut [u8]) -> Result<()> {
        check_aligned(data.len(), C::block_size())?;
        let (blocks, _) = Array::<u8, C::BlockSize>::slice_as_chunks_mut(data);
        self.cipher.decrypt_blocks(blocks);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn des_classic_vector_and_3des_degenerates_to_des() {
        // The textbook DES example: key 133457799BBCDFF1, plaintext 0123456789ABCDEF.
        let key = [0x13, 0x34, 0x57, 0x79, 0x9b, 0xbc, 0xdf, 0xf1];
        let des = Algorithm::Des.new_cipher(&key).unwrap();
        let mut b = [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef];
        des.encrypt_blocks(&mut b).unwrap();
        assert_eq!(b, [0x85, 0xe8, 0x13, 0x54, 0x0f, 0x0a, 0xb4, 0x05]);
        let k3: Vec<u8> = key.iter().chain(&key).chain(&key).copied().collect();
        let tdes = Algorithm::TripleDes.new_cipher(&k3).unwrap();
        let mut c = [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef];
        tdes.encrypt_blocks(&mut c).unwrap();
        assert_eq!(c, b);
        tdes.decrypt_blocks(&mut c).unwrap();
        assert_eq!(c, [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]);
    }

    #[test]
    fn bad_lengths_are_errors() {
        assert!(Algorithm::Aes.new_cipher(&[0; 15]).is_err());
        assert!(Algorithm::Mars.new_cipher(&[0; 17]).is_err());
        assert!(Algorithm::Blowfish.new_cipher(&[]).is_err());
        let aes = Algorithm::Aes.new_cipher(&[0; 16]).unwrap();
        assert_eq!(
            aes.encrypt_blocks(&mut [0; 17]),
            Err(Error::NotBlockAligned { len: 17, block: 16 })
        );
        for alg in Algorithm::ALL {
            let key: &[u8] = match alg {
                Algorithm::Des => &[1; 8],
                Algorithm::TripleDes => &[1; 24],
                _ => &[1; 16],
            };
            let c = alg.new_cipher(key).unwrap();
            let mut d = vec![9u8; c.block_size() * 3];
            c.encrypt_blocks(&mut d).unwrap();
            assert_ne!(d, vec![9u8; c.block_size() * 3], "{alg:?}");
            c.decrypt_blocks(&mut d).unwrap();
            assert_eq!(d, vec![9u8; c.block_size() * 3], "{alg:?}");
        }
    }
}
