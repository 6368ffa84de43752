#!/usr/bin/env python3
# Regenerates tests/legacy/vectors.rs from the original library:
#   ZNET_PEERS_BIN=DIR_WITH_znet_cipher python3 crates/zs-crypto/tests/legacy/gen_vectors.py crates/zs-crypto/tests/legacy/vectors.rs
import subprocess, sys
from concurrent.futures import ThreadPoolExecutor
import os
O=os.path.join(os.environ.get('ZNET_PEERS_BIN','target/znet'),'znet_cipher')
def run(args): return subprocess.run([O]+args,capture_output=True,text=True,check=True).stdout.strip()
def pat(n, m=31, a=7): return bytes((i*m+a)&255 for i in range(n))
HASH_LENS=[1,5,6,64,143,300]
CIPHER_LENS=[13,70,131]
jobs=[]
for h in range(20):
    for n in HASH_LENS: jobs.append(('hash',h,n))
seeds=[bytes(range(8)), bytes([0xa5,0x5a,0x01,0xfe,0x10,0x20,0x30,0x40])]
with ThreadPoolExecutor(16) as ex:
    hres=list(ex.map(lambda j: run(['hash',str(j[1]),pat(j[2]).hex()]), jobs))
    keys=list(ex.map(lambda c_s: run(['key',str(c_s[0]),c_s[1].hex()]), [(c,s) for c in range(19) for s in seeds]))
    cjobs=[]
    for c in range(19):
        kbs=[keys[c*2], keys[c*2+1], pat(20,13,1).hex()]
        for ki,kb in enumerate(kbs):
            n=CIPHER_LENS[ki]
            cjobs.append((c,kb,n))
    cres=list(ex.map(lambda j: run(['enc',str(j[0]),j[1],pat(j[2]).hex()]), cjobs))
out=[]
out.append("// Generated from znet_cipher (ZNet 974c237, FPC 3.2.2) by tests/legacy/gen_vectors.py.\n")
out.append("/// (hash id, input length, digest hex); input byte i is (31 i + 7) mod 256.\npub const HASHES: &[(u8, usize, &str)] = &[\n")
for (k,h,n),r in zip(jobs,hres): out.append(f'    ({h}, {n}, "{r}"),\n')
out.append("];\n\n/// (cipher id, seed hex, key buffer hex) from `znet_cipher key`.\npub const KEYS: &[(u8, &str, &str)] = &[\n")
i=0
for c in range(19):
    for s in seeds:
        out.append(f'    ({c}, "{s.hex()}", "{keys[i]}"),\n'); i+=1
out.append("];\n\n/// (cipher id, key buffer hex, plaintext length, ciphertext hex) from `znet_cipher enc`;\n/// plaintext byte i is (31 i + 7) mod 256.\npub const CIPHERS: &[(u8, &str, usize, &str)] = &[\n")
for (c,kb,n),r in zip(cjobs,cres): out.append(f'    ({c}, "{kb}", {n}, "{r}"),\n')
out.append("];\n")
open(sys.argv[1],'w').write(''.join(out))
