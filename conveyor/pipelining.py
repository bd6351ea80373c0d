"""Sends pipelined ahead of their replies: how far a thread may run ahead of its broker."""

#: Single publishes a thread may have sent without their reply (Redis) or confirm (RabbitMQ)
#: before the next one waits for the older half: also the most a lost connection can make it
#: send twice (see `Transport.confirm`).
SEND_WINDOW = 64
