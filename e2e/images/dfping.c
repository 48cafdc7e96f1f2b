/* dfping: one ICMP echo with the Don't Fragment bit set, for path-MTU checks in the e2e tests.
 * Busybox's ping cannot forbid fragmentation: a payload too big for the path would be
 * fragmented and still answered. Here an oversized packet fails at once (EMSGSIZE).
 * Usage: dfping ADDRESS PAYLOAD_BYTES [TIMEOUT_SECONDS]
 * Exit 0: reply received; 1: no reply within the timeout; 2: refused (message too long, or
 * another error, printed). IPv4 only; needs CAP_NET_RAW. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/ip_icmp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static unsigned short checksum(const void *data, size_t len)
{
	const unsigned char *p = data;
	unsigned long sum = 0;

	for (; len > 1; p += 2, len -= 2)
		sum += (unsigned long)p[0] << 8 | p[1];
	if (len)
		sum += (unsigned long)p[0] << 8;
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return htons((unsigned short)~sum);
}

static int send_echo(int fd, const struct sockaddr_in *to, size_t payload, unsigned short id)
{
	size_t len = sizeof(struct icmphdr) + payload;
	unsigned char *buf = calloc(1, len);
	struct icmphdr *icmp = (struct icmphdr *)buf;
	ssize_t sent;

	if (!buf)
		return -1;
	memset(buf + sizeof(*icmp), 0xa5, payload);
	icmp->type = ICMP_ECHO;
	icmp->un.echo.id = htons(id);
	icmp->un.echo.sequence = htons(1);
	icmp->checksum = checksum(buf, len);
	sent = sendto(fd, buf, len, 0, (const struct sockaddr *)to, sizeof(*to));
	free(buf);
	return sent < 0 ? -1 : 0;
}

/* Wait for the echo reply with our id from the address; 0 when it came. */
static int wait_reply(int fd, const struct sockaddr_in *from_want, unsigned short id, int timeout_ms)
{
	static unsigned char buf[65536];
	struct pollfd pfd = { .fd = fd, .events = POLLIN };

	while (poll(&pfd, 1, timeout_ms) > 0) {
		struct sockaddr_in from;
		socklen_t flen = sizeof(from);
		ssize_t n = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&from, &flen);
		struct iphdr *ip = (struct iphdr *)buf;
		struct icmphdr *icmp;

		if (n < (ssize_t)sizeof(*ip) || from.sin_addr.s_addr != from_want->sin_addr.s_addr)
			continue;
		icmp = (struct icmphdr *)(buf + ip->ihl * 4);
		if (icmp->type == ICMP_ECHOREPLY && ntohs(icmp->un.echo.id) == id)
			return 0;
	}
	return -1;
}

int main(int argc, char **argv)
{
	struct sockaddr_in to = { .sin_family = AF_INET };
	int pmtu = IP_PMTUDISC_DO, fd, timeout;
	size_t payload;
	unsigned short id = (unsigned short)getpid();

	if (argc < 3 || inet_pton(AF_INET, argv[1], &to.sin_addr) != 1) {
		fprintf(stderr, "usage: dfping IPV4_ADDRESS PAYLOAD_BYTES [TIMEOUT_SECONDS]\n");
		return 2;
	}
	payload = strtoul(argv[2], NULL, 10);
	timeout = argc > 3 ? atoi(argv[3]) : 3;
	fd = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
	if (fd < 0 || setsockopt(fd, IPPROTO_IP, IP_MTU_DISCOVER, &pmtu, sizeof(pmtu)) < 0) {
		perror("dfping: raw socket");
		return 2;
	}
	if (send_echo(fd, &to, payload, id) < 0) {
		fprintf(stderr, "dfping: %s: %zu-byte payload with DF: %s\n", argv[1], payload, strerror(errno));
		return 2;
	}
	if (wait_reply(fd, &to, id, timeout * 1000) < 0) {
		printf("dfping: %s: no reply to a %zu-byte payload with DF in %d s\n", argv[1], payload, timeout);
		return 1;
	}
	printf("dfping: %s: reply to a %zu-byte payload with DF\n", argv[1], payload);
	return 0;
}
