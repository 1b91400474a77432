#!/usr/bin/python3
"""Independent float64 numpy forward (first 64 golden tokens) from model.safetensors vs tests/golden/*.safetensors."""
import sys, json, numpy as np
sys.path.insert(0,'tools'); import mamba_common as mc
for name in ("kjv-mamba-192","kjv-mamba-192-outlier"):
    W,_=mc.load_safetensors(f"models/{name}/model.safetensors"); G,meta=mc.load_safetensors(f"tests/golden/{name}.safetensors")
    assert "lm_head.weight" not in W
    cfg=json.load(open(f"models/{name}/config.json")); E=cfg["intermediate_size"]; R=cfg["time_step_rank"]; N=16; K=4
    T=64; tok=G["tokens"][:T].astype(int)
    h=W["backbone.embeddings.weight"][tok].astype(np.float64)
    rms=lambda v,g: v/np.sqrt((v**2).mean(-1,keepdims=True)+1e-5)*g
    silu=lambda v: v/(1+np.exp(-v))
    for i in range(4):
        p=f"backbone.layers.{i}."; hn=rms(h,W[p+"norm.weight"]); xz=hn@W[p+"mixer.in_proj.weight"].T; x,z=xz[:,:E],xz[:,E:]
        cw=W[p+"mixer.conv1d.weight"][:,0,:]; xp=np.vstack([np.zeros((K-1,E)),x]); xc=np.stack([(xp[t:t+K]*cw.T).sum(0) for t in range(T)])+W[p+"mixer.conv1d.bias"]
        x=silu(xc); dbc=x@W[p+"mixer.x_proj.weight"].T; dt,B,C=dbc[:,:R],dbc[:,R:R+N],dbc[:,R+N:]
        delta=np.log1p(np.exp(dt@W[p+"mixer.dt_proj.weight"].T+W[p+"mixer.dt_proj.bias"])); A=-np.exp(W[p+"mixer.A_log"])
        s=np.zeros((E,N)); ys=[]
        for t in range(T):
            s=np.exp(delta[t][:,None]*A)*s+delta[t][:,None]*B[t][None]*x[t][:,None]; ys.append(s@C[t]+W[p+"mixer.D"]*x[t])
        y=np.array(ys)*silu(z); h=h+y@W[p+"mixer.out_proj.weight"].T
        print(name,i,"hidden maxdiff",np.abs(h-G[f"hidden.{i}"][:T]).max(),"max|h|",np.abs(h).max())
    lg=rms(h,W["backbone.norm_f.weight"])@W["backbone.embeddings.weight"].T
    print(name,"logits maxdiff",np.abs(lg-G["logits"][:T]).max(), meta["heldout_byte_offset"])
