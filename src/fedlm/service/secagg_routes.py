"""The SecAgg stages of the HTTP API: /v1/rounds/{round}/secagg/... (routes only; the coordinator decides).

    POST keys              two X25519 public keys, my certificate, my signature on them   (stage advertise)
    GET  neighbour-keys    the neighbours' signed adverts                                 (once advertise closed)
    POST shares            one sealed box per neighbour + commitment                      (stage share)
    GET  shares            the boxes sealed to me                                         (once share closed)
    POST ../updates        the masked input, safetensors uint32                           (stage mask; the upload route)
    GET  survivors         survivors and dropped                                          (once mask closed)
    POST confirm           my signature on those two sets                                 (stage confirm)
    GET  unmask-request    the sets again, with my neighbours' signatures on them         (once confirm closed)
    POST unmask            seed shares of survivors, key shares of the dropped            (stage unmask)

Bytes travel as base64, the certificate as PEM. A GET before its stage closed is refused
with 409 `stage_not_ready` (ask again); a client that missed an earlier stage gets 409
`not_in_stage`. The coordinator checks a signature against the app's ClientVerifier (CA,
dates, CRL, CN) before it accepts an advert or a confirmation (service.secure_stages).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from cryptography import x509
from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, Field

from fedlm.secagg.identity import MAX_CREDENTIAL_BYTES, trusted_owner
from fedlm.service.coordinator import Coordinator
from fedlm.service.errors import Refused
from fedlm.service.secagg_codec import MAX_PEERS

RoundNumber = Annotated[int, Path(ge=1, le=2**31 - 1)]
Base64 = Annotated[str, Field(max_length=512)]
PeerTable = Annotated[dict[Annotated[str, Field(max_length=128)], Base64], Field(max_length=MAX_PEERS)]


class KeysIn(BaseModel):
    cipher_public: Base64 = Field(description="X25519 public key (32 bytes, base64) that seals shares sent to me")
    mask_public: Base64 = Field(description="X25519 public key (32 bytes, base64) that agrees pairwise mask seeds")
    certificate: str = Field(max_length=MAX_CREDENTIAL_BYTES, description="my client certificate, PEM")
    signature: Base64 = Field(description="ECDSA-SHA256 signature (DER, base64) with my certificate's key over "
                                          "('fedlm-secagg/advert', round, my id, cipher_public, mask_public)")


class ConfirmIn(BaseModel):
    signature: Base64 = Field(description="ECDSA-SHA256 signature (DER, base64) over ('fedlm-secagg/survivors', "
                                          "round, my mask_public, sorted survivors, sorted dropped)")


class SharesIn(BaseModel):
    sealed: PeerTable = Field(description="neighbour id -> AES-GCM box (160 bytes, base64) of my seed and key shares")
    seed_commitment: Base64 = Field(description="SHA-256 of my self-mask seed (32 bytes, base64)")


class UnmaskIn(BaseModel):
    seed_shares: PeerTable = Field(description="surviving neighbour -> share of its self-mask seed (66 bytes, base64)")
    key_shares: PeerTable = Field(description="dropped neighbour -> share of its masking key (66 bytes, base64)")


def certificate_owner(request: Request) -> Callable[[x509.Certificate], str | None]:
    """The client id a certificate may speak for under the app's ClientVerifier (CA, dates, CRL, CN), or None."""
    return trusted_owner(request.app.state.verifier.identify, Refused)


def secagg_router(coordinator: Coordinator, identify: Callable[..., str]) -> APIRouter:
    """`identify` is the dependency that yields the caller's client id (its certificate's CN)."""
    router = APIRouter(prefix="/v1/rounds/{round}/secagg", tags=["secagg"])

    @router.post("/keys")
    def advertise(round: RoundNumber, body: KeysIn, request: Request, me: str = Depends(identify)) -> dict[str, Any]:
        return coordinator.post_secagg("advert", me, round, body.model_dump(), owner=certificate_owner(request))

    @router.get("/neighbour-keys")
    def neighbour_keys(round: RoundNumber, me: str = Depends(identify)) -> dict[str, Any]:
        return coordinator.neighbour_keys(me, round)

    @router.post("/shares")
    def post_shares(round: RoundNumber, body: SharesIn, me: str = Depends(identify)) -> dict[str, Any]:
        return coordinator.post_secagg("shares", me, round, body.model_dump())

    @router.get("/shares")
    def shares_for_me(round: RoundNumber, me: str = Depends(identify)) -> dict[str, Any]:
        return coordinator.shares_for(me, round)

    @router.get("/survivors")
    def survivors(round: RoundNumber, me: str = Depends(identify)) -> dict[str, Any]:
        return coordinator.survivor_sets(me, round)

    @router.post("/confirm")
    def confirm(round: RoundNumber, body: ConfirmIn, request: Request, me: str = Depends(identify)) -> dict[str, Any]:
        return coordinator.post_secagg("confirm", me, round, body.model_dump(), owner=certificate_owner(request))

    @router.get("/unmask-request")
    def unmask_request(round: RoundNumber, me: str = Depends(identify)) -> dict[str, Any]:
        return coordinator.unmask_request(me, round)

    @router.post("/unmask")
    def post_unmask(round: RoundNumber, body: UnmaskIn, me: str = Depends(identify)) -> dict[str, Any]:
        return coordinator.post_secagg("unmask", me, round, body.model_dump())

    return router
