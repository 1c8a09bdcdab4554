# The hardware watchdog, fed only while every firmware task is alive. A task that ends (a bug,
# an unhandled error) stops the feeding and the chip resets; the flash log survives that, so
# a reset costs at most the samples not yet flushed, never an acknowledged one.
from firmware import aio

WDT_TIMEOUT_MS = 8000
FEED_EVERY_MS = 2000


class TaskWatchdog:
    def __init__(self, wdt_factory):
        self._wdt_factory = wdt_factory
        self.tasks = []
        self.starved = False

    def watch(self, task):
        self.tasks.append(task)

    def all_alive(self):
        for task in self.tasks:
            if task.done():
                return False
        return True

    async def run(self):
        wdt = self._wdt_factory(WDT_TIMEOUT_MS)
        while True:
            if self.all_alive():
                wdt.feed()
            elif not self.starved:
                self.starved = True
                print("watchdog: a firmware task ended; letting the watchdog reset the chip")
            await aio.sleep_ms(FEED_EVERY_MS)
