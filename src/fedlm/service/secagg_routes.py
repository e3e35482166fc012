"""The SecAgg stages of the HTTP API: /v1/rounds/{round}/secagg/... (routes only; the coordinator decides).

    POST keys              advertise two X25519 public keys           (stage advertise)
    GET  neighbour-keys    the neighbours' public keys                (once advertise closed)
    POST shares            one sealed box per neighbour + commitment  (stage share)
    GET  shares            the boxes sealed to me                     (once share closed)
    POST ../updates        the masked input, safetensors uint32       (stage mask; the upload route)
    GET  unmask-request    survivors and dropped                      (once mask closed)
    POST unmask            seed shares of survivors, key shares of the dropped (stage unmask)

Bytes travel as base64. A GET before its stage closed is refused with 409 `stage_not_ready`
(ask again); a client that missed an earlier stage gets 409 `not_in_stage`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, Field

from fedlm.service.coordinator import Coordinator
from fedlm.service.secagg_codec import MAX_PEERS

RoundNumber = Annotated[int, Path(ge=1, le=2**31 - 1)]
Base64 = Annotated[str, Field(max_length=512)]
PeerTable = Annotated[dict[Annotated[str, Field(max_length=128)], Base64], Field(max_length=MAX_PEERS)]


class KeysIn(BaseModel):
    cipher_public: Base64 = Field(description="X25519 public key (32 bytes, base64) that seals shares sent to me")
    mask_public: Base64 = Field(description="X25519 public key (32 bytes, base64) that agrees pairwise mask seeds")


class SharesIn(BaseModel):
    sealed: PeerTable = Field(description="neighbour id -> AES-GCM box (160 bytes, base64) of my seed and key shares")
    seed_commitment: Base64 = Field(description="SHA-256 of my self-mask seed (32 bytes, base64)")


class UnmaskIn(BaseModel):
    seed_shares: PeerTable = Field(description="surviving neighbour -> share of its self-mask seed (66 bytes, base64)")
    key_shares: PeerTable = Field(description="dropped neighbour -> share of its masking key (66 bytes, base64)")


def secagg_router(coordinator: Coordinator, identify: Callable[..., str]) -> APIRouter:
    """`identify` is the dependency that yields the caller's client id (its certificate's CN)."""
    router = APIRouter(prefix="/v1/rounds/{round}/secagg", tags=["secagg"])

    @router.post("/keys")
    def advertise(round: RoundNumber, body: KeysIn, me: str = Depends(identify)) -> dict[str, Any]:
        return coordinator.post_secagg("advert", me, round, body.model_dump())

    @router.get("/neighbour-keys")
    def neighbour_keys(round: RoundNumber, me: str = Depends(identify)) -> dict[str, Any]:
        return coordinator.neighbour_keys(me, round)

    @router.post("/shares")
    def post_shares(round: RoundNumber, body: SharesIn, me: str = Depends(identify)) -> dict[str, Any]:
        return coordinator.post_secagg("shares", me, round, body.model_dump())

    @router.get("/shares")
    def shares_for_me(round: RoundNumber, me: str = Depends(identify)) -> dict[str, Any]:
        return coordinator.shares_for(me, round)

    @router.get("/unmask-request")
    def unmask_request(round: RoundNumber, me: str = Depends(identify)) -> dict[str, Any]:
        return coordinator.unmask_request(me, round)

    @router.post("/unmask")
    def post_unmask(round: RoundNumber, body: UnmaskIn, me: str = Depends(identify)) -> dict[str, Any]:
        return coordinator.post_secagg("unmask", me, round, body.model_dump())

    return router
