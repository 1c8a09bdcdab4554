"""The link drops after the gateway committed a batch but before its ACK reached the patch:
the next connection acknowledges what is stored already at once, so the patch frees it even
when nothing newer ever commits (a patch that stopped sampling). Real gateway, Bumble link,
unchanged firmware on a virtual patch."""

import asyncio

import pytest
from gateway_harness import GatewayRig, wait_for

from firmware import protocol_ids as fw_ids

pytestmark = pytest.mark.slow


async def test_an_ack_lost_with_the_link_is_sent_again_at_the_next_handshake(tmp_path):
    async with GatewayRig(tmp_path, patches=1) as rig:
        patch = rig.patches[0]
        await wait_for(lambda: patch.patch.sampling_tasks, what="the patch to start sampling")
        patch.stop_sampling()
        patch.preload_backlog(400)
        firmware = patch.patch
        execute = firmware.link._execute
        lost = []

        def ack_lost_with_the_link(opcode, operands):
            if opcode == fw_ids.OP_ACK and operands == firmware.log.next_seq - 1 and not lost:
                # The ACK of the last sample never arrives: the link drops as it is written.
                lost.append(operands)
                asyncio.get_running_loop().create_task(
                    rig.radio.drop_link(str(patch.bumble_device.random_address)))
                return fw_ids.ST_SUCCESS, None
            return execute(opcode, operands)

        firmware.link._execute = ack_lost_with_the_link
        gateway = await rig.start_gateway()
        device = rig.identities[0][0]
        await wait_for(lambda: lost, 30, "the last sample's ACK (to be lost)")
        await wait_for(lambda: gateway.store.committed_seq(device) == firmware.log.next_seq - 1,
                       30, "every sample stored")
        # Nothing newer will commit; the log must still empty.
        await wait_for(lambda: len(firmware.log) == 0, 30,
                       f"the patch to be acknowledged (holds {len(firmware.log)})")
        assert rig.link(0).connects >= 2
        assert gateway.store.sample_seqs(device) == list(
            range(firmware.boot_state.first_seq, firmware.log.next_seq))
